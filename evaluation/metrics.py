"""Image-similarity metrics for translated MRI slices, and their aggregation.

Protocol: the target is normalised as in the data pipeline (`data.preprocess.normalize`) and
the prediction mapped from [-1, 1] to [0, 1] (`from_network`) by the caller; metrics are
computed here on the original grid with data range 1, in float64.

Definitions (chosen to match scikit-image, which is only a test dependency):

* ssim: Wang et al. 2004 with an 11-tap Gaussian window (sigma 1.5, truncated at 3.5 sigma),
  K1 0.01, K2 0.03, population (co)variances; the SSIM map is averaged over the pixels at
  least 5 px from the border, where the window fits. This equals skimage's
  ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1)`` (which crops 5 px of its reflect-filtered map) to a relative 1e-12 (float64
  sums in another order), and ``tf.image.ssim(..., max_val=1)`` ('valid' filtering, float32) to
  an absolute 2e-5; tests/test_metrics.py checks both on synthetic and real slices. It is
  implemented in NumPy so evaluation does not pay TensorFlow's start-up or float32 rounding.
* psnr: 10 log10(1 / mse), capped at 100 dB by flooring mse at 1e-10, so identical images
  give exactly 100 dB and aggregates stay finite.
* mae, mse: mean absolute / squared error.
* nrmse: skimage's default ``normalized_root_mse(target, pred, normalization='euclidean')``,
  i.e. ||target - pred|| / ||target||; NaN when the target is all zero.
* *_fg: the same metric restricted to the foreground: by default the pixels where the target > 0,
  else the mask the caller gives (evaluate.py's --mask, data/masks.py). For
  ssim_fg the full-image SSIM map is averaged over the foreground pixels that lie inside the
  same 5-px border crop as ssim, so ssim_fg equals ssim when everything is foreground. An empty
  foreground (for ssim_fg: none inside the crop) gives NaN.

Aggregation skips NaN values and reports how many values it used.
"""

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

METRICS = ("ssim", "psnr", "mae", "mse", "nrmse")
FOREGROUND_SUFFIX = "_fg"

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): an 11-tap window, as in skimage and tf.image.ssim
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 1.0
MSE_FLOOR = 1e-10  # caps PSNR at 10 * log10(1 / 1e-10) = 100 dB

_offsets = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1)
_SSIM_WINDOW = np.exp(-0.5 * (_offsets / SSIM_SIGMA) ** 2)
_SSIM_WINDOW /= _SSIM_WINDOW.sum()


def parse_metrics(spec: str) -> list[str]:
    """'ssim, psnr' -> ['ssim', 'psnr']; fails early on typos so a long evaluation is not wasted."""
    valid = METRICS + tuple(name + FOREGROUND_SUFFIX for name in METRICS)
    names = [name.strip().lower() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    if not names:
        raise ValueError(f"no metric given; valid: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def metric_columns(names: Sequence[str]) -> list[str]:
    """Each requested metric followed by its foreground variant, without duplicates."""
    columns = []
    for name in names:
        base = name.removesuffix(FOREGROUND_SUFFIX)
        if base not in METRICS:
            raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
        columns += [base, base + FOREGROUND_SUFFIX]
    return list(dict.fromkeys(columns))


def _gaussian_filter_valid(stack: np.ndarray) -> np.ndarray:
    """Separable Gaussian filtering of the last two axes, keeping only where the window fits."""
    taps = 2 * SSIM_RADIUS + 1
    rows = sliding_window_view(stack, taps, axis=-2) @ _SSIM_WINDOW
    return sliding_window_view(rows, taps, axis=-1) @ _SSIM_WINDOW


def ssim_map(target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Local SSIM at every pixel at least SSIM_RADIUS from the border (shape shrinks by 10)."""
    x = np.asarray(target, np.float64)
    y = np.asarray(prediction, np.float64)
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = _gaussian_filter_valid(np.stack([x, y, x * x, y * y, x * y]))
    var_x = mean_xx - mean_x * mean_x
    var_y = mean_yy - mean_y * mean_y
    covariance = mean_xy - mean_x * mean_y
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return numerator / denominator


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _error_metrics(target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """psnr, mae, mse and nrmse over the given pixels (a whole image or a masked selection)."""
    if target.size == 0:
        return dict.fromkeys(("psnr", "mae", "mse", "nrmse"), float("nan"))
    error = target - prediction
    mse = float(np.mean(error**2))
    target_rms = float(np.sqrt(np.mean(target**2)))
    return {
        "psnr": float(10 * np.log10(DATA_RANGE**2 / max(mse, MSE_FLOOR))),
        "mae": float(np.mean(np.abs(error))),
        "mse": mse,
        "nrmse": float(np.sqrt(mse) / target_rms) if target_rms > 0 else float("nan"),
    }


def slice_metrics(target: np.ndarray, prediction: np.ndarray, names: Sequence[str],
                  foreground: np.ndarray | None = None) -> dict[str, float]:
    """The requested metrics and their foreground variants (over `foreground`, default target > 0) for one
    [0, 1] slice pair."""
    target = np.asarray(target, np.float64)
    prediction = np.asarray(prediction, np.float64)
    if target.shape != prediction.shape or target.ndim != 2:
        raise ValueError(f"need two 2D images of the same shape, got {target.shape} and {prediction.shape}")
    if min(target.shape) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"images must be at least {2 * SSIM_RADIUS + 1} px per side, got {target.shape}")
    columns = metric_columns(names)
    foreground = target > 0 if foreground is None else np.asarray(foreground, bool)
    if foreground.shape != target.shape:
        raise ValueError(f"foreground mask of shape {foreground.shape} for images of shape {target.shape}")
    values = {}
    if "ssim" in columns:
        local_ssim = ssim_map(target, prediction)
        interior = (slice(SSIM_RADIUS, -SSIM_RADIUS),) * 2
        values["ssim"] = float(local_ssim.mean())
        values["ssim_fg"] = _mean_or_nan(local_ssim[foreground[interior]])
    values.update(_error_metrics(target, prediction))
    fg_values = _error_metrics(target[foreground], prediction[foreground])
    values.update({name + FOREGROUND_SUFFIX: value for name, value in fg_values.items()})
    return {column: values[column] for column in columns}


def _statistics(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, population std and count of the non-NaN values (NaN, NaN, 0 when there are none)."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan"), 0
    return float(values.mean()), float(values.std()), int(values.size)


def summarize(rows: list[dict], names: Sequence[str], group_key: str = "subject") -> dict[str, dict]:
    """Per metric: statistics over slices, and over subjects (each subject's slice mean first).

    Subjects differ in slice count, so the subject-level numbers keep a subject with many
    slices from dominating; NaN values (e.g. empty foreground) are skipped at both levels.
    """
    summary = {}
    for column in metric_columns(names):
        by_subject: dict[object, list[float]] = {}
        for row in rows:
            by_subject.setdefault(row[group_key], []).append(row[column])
        subject_means = [_statistics(np.array(values, dtype=np.float64))[0] for values in by_subject.values()]
        mean, std, n = _statistics(np.array([row[column] for row in rows], dtype=np.float64))
        subject_mean, subject_std, n_subjects = _statistics(np.array(subject_means, dtype=np.float64))
        summary[column] = {
            "mean": mean,
            "std": std,
            "n": n,
            "subject_mean": subject_mean,
            "subject_std": subject_std,
            "n_subjects": n_subjects,
        }
    return summary
