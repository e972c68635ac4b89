"""The one preprocessing path shared by training, evaluation and translation.

Intensity: clip negatives to 0, divide by a per-volume scale, clip to [0, 1]; the networks see
[-1, 1]. The scale (`--intensity`) is the 99.5th percentile of the positive voxels (`percentile`),
or the one that puts the median of the head at HEAD_MEDIAN_LEVEL (`head_median`): a skull-on scan's
top percentile is scalp fat, a skull-stripped scan's is white matter, so on a cohort mixing both
the percentile puts the same tissue at twice the value in one as in the other, where the head's
median is brain tissue in both. Geometry: optionally resampled in-plane to one pixel spacing
(`--spacing`, from the scanner geometry), then zero-padded to a square canvas (scaled down, aspect
kept, only when larger). Every step keeps what is needed to undo it on a network output.
"""

import dataclasses

import numpy as np

from data import masks

CANVAS = 256
PERCENTILE = 99.5
INTENSITY = ("percentile", "head_median")
# head_median: the head's median lands here. Measured on the cohort of docs/cohort.md under `percentile`: the
# head's median is 0.28-0.41 on skull-on T1s, 0.66-0.74 on skull-stripped T1s and 0.30-0.38 on every T2.
HEAD_MEDIAN_LEVEL = 0.35


def intensity_scale(volume: np.ndarray, method: str = "percentile") -> float:
    """The divisor that maps a volume (or 2D image) to [0, 1] (`method`: one of INTENSITY); 0 when it has no
    positive voxel."""
    if method not in INTENSITY:
        raise ValueError(f"intensity must be one of {', '.join(INTENSITY)}, not {method!r}")
    positive = volume[volume > 0]
    if positive.size == 0:
        return 0.0
    scale = float(np.percentile(positive, PERCENTILE))
    if method == "head_median":
        unit = normalize(volume, scale)
        head = np.stack([masks.head_mask(s) for s in unit.reshape((-1,) + unit.shape[-2:])]).reshape(unit.shape)
        median = float(np.median(volume[head])) if head.any() else 0.0
        if median > 0:
            scale = median / HEAD_MEDIAN_LEVEL
    return scale


def normalize(volume: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Clip negatives, divide by `scale` (default: the volume's own), clip to [0, 1]; float32."""
    volume = np.nan_to_num(np.asarray(volume, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if scale is None:
        scale = intensity_scale(volume)
    if scale <= 0:
        return np.zeros_like(volume, dtype=np.float32)
    return np.clip(np.maximum(volume, 0) / scale, 0.0, 1.0).astype(np.float32)


def to_network(unit: np.ndarray) -> np.ndarray:
    """[0, 1] -> [-1, 1]."""
    return (np.asarray(unit, np.float32) * 2.0 - 1.0).astype(np.float32)


def from_network(signed: np.ndarray) -> np.ndarray:
    """[-1, 1] -> [0, 1], clipped."""
    return np.clip((np.asarray(signed, np.float32) + 1.0) / 2.0, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a slice was placed on the canvas: the resized size and the top-left offset."""

    height: int  # original
    width: int
    resized_height: int
    resized_width: int
    top: int
    left: int


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-style resize in float32 (PIL mode 'F' keeps full precision)."""
    from PIL import Image

    return np.asarray(
        Image.fromarray(image.astype(np.float32), mode="F").resize((width, height), Image.BOX),
        dtype=np.float32,
    )


def to_canvas(image: np.ndarray, size: int = CANVAS, zoom: tuple[float, float] = (1.0, 1.0)
              ) -> tuple[np.ndarray, Geometry]:
    """Zero-pad a 2D slice to size x size, resized by `zoom` (rows, columns) first and then scaled down (aspect
    kept) if larger than the canvas. `zoom` is the slice's pixel spacing over the spacing wanted; 1 keeps its pixels.
    """
    height, width = image.shape
    zoomed_height, zoomed_width = height * zoom[0], width * zoom[1]
    factor = min(1.0, size / zoomed_height, size / zoomed_width)
    resized_height = min(size, max(1, round(zoomed_height * factor)))
    resized_width = min(size, max(1, round(zoomed_width * factor)))
    if (resized_height, resized_width) != (height, width):
        image = _resize(image, resized_height, resized_width)
    top = (size - resized_height) // 2
    left = (size - resized_width) // 2
    canvas = np.zeros((size, size), np.float32)
    canvas[top : top + resized_height, left : left + resized_width] = image
    geometry = Geometry(height, width, resized_height, resized_width, top, left)
    return canvas, geometry


def place_like(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """An image of a slice's original size (a mask) on the canvas as `to_canvas` placed the slice, zoom included."""
    g = geometry
    canvas, _ = to_canvas(image, zoom=(g.resized_height / g.height, g.resized_width / g.width))
    return canvas


def from_canvas(canvas: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Undo `to_canvas`: crop the padding and resize back to the original grid."""
    g = geometry
    image = np.asarray(canvas, np.float32)[g.top : g.top + g.resized_height, g.left : g.left + g.resized_width]
    if (g.resized_height, g.resized_width) != (g.height, g.width):
        image = _resize(image, g.height, g.width)
    return image


def foreground_fraction(unit: np.ndarray, threshold: float = 0.05) -> float:
    """Fraction of pixels above `threshold` in a [0, 1] slice; used to skip near-empty slices."""
    return float(np.mean(np.asarray(unit) > threshold))
