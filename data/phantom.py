"""Synthetic 2D axial brain phantoms: the built-in dataset, so training and evaluation run with nothing downloaded.

Each subject gets a random anatomy (head size, shape and pose; scalp, skull with
diploe, subarachnoid CSF, a folded cortical ribbon, white matter, ventricles,
deep grey nuclei, sometimes a lesion) built as partial-volume tissue fractions.
A contrast is then simulated rather than painted: every tissue's spin-echo
signal (BrainWeb 1.5 T relaxation values) is weighted by its fraction, blurred
by a small point-spread function, multiplied by a smooth coil bias field and
corrupted by Rician noise, as in a magnitude image.

Seeding: the anatomy depends only on (seed, subject_id) and the acquisition
(bias, noise) on (seed, subject_id, contrast), so one subject rendered in both
contrasts is a registered pair, which is what the paired test split relies on.
"""

import dataclasses

import numpy as np

SIZE = 256

# name -> (T1 ms, T2 ms, relative proton density). CSF, grey and white matter,
# fat and muscle/skin are BrainWeb's 1.5 T values; the lesion is BrainWeb's MS
# lesion class (T2-hyperintense, T1-hypointense relative to white matter).
# Cortical bone has a sub-millisecond T2* and little mobile water, so it gets
# T2 = 1 ms and PD = 0.05: black at any clinical echo time.
TISSUES: dict[str, tuple[float, float, float]] = {
    "csf": (2569.0, 329.0, 1.0),
    "grey_matter": (833.0, 83.0, 0.86),
    "white_matter": (500.0, 70.0, 0.77),
    "fat": (350.0, 70.0, 1.0),
    "muscle_skin": (900.0, 47.0, 1.0),
    "bone": (250.0, 1.0, 0.05),
    "lesion": (752.0, 237.0, 0.76),
}

# contrast -> (TR ms, TE ms)
SEQUENCES: dict[str, tuple[float, float]] = {
    "t1": (500.0, 15.0),
    "t2": (4000.0, 100.0),
}

LESION_PROBABILITY = 0.3
PSF_SIGMA = 0.6  # pixels at SIZE: the partial-volume blur of the acquisition
BIAS_AMPLITUDE = (0.08, 0.18)  # range of the bias field's max |log gain|
NOISE_FRACTION = (0.02, 0.04)  # range of the Rician sigma relative to the white-matter signal

_BRAIN_TISSUES = ("csf", "grey_matter", "white_matter", "lesion")
# Final SeedSequence words keep the anatomy and acquisition streams apart; they are
# non-zero because SeedSequence treats trailing zeros like missing words.
_ANATOMY_STREAM = 1
_ACQUISITION_STREAM = 2
_ANGLE_SAMPLES = 4096  # resolution of the per-angle boundary tables: < 0.2 px of arc at the scalp
_ANGLES = np.linspace(-np.pi, np.pi, _ANGLE_SAMPLES, endpoint=False)
_ANGLE_STEP = 2 * np.pi / _ANGLE_SAMPLES

# Deep structures of the right hemisphere, mirrored to the left, in units of the
# brain radius: (lateral centre, antero-posterior centre (negative = anterior),
# lateral semi-axis, antero-posterior semi-axis, tilt in degrees; positive tilt
# turns the anterior end outwards). The layout is the classic slice through the
# frontal horns, basal ganglia and thalami.
_NUCLEI = (
    (0.17, -0.17, 0.07, 0.12, 20.0),  # caudate head
    (0.33, -0.02, 0.065, 0.18, 15.0),  # putamen
    (0.10, 0.13, 0.085, 0.14, -5.0),  # thalamus
)
_VENTRICLES = (
    (0.085, -0.22, 0.055, 0.19, 20.0),  # frontal horn
    (0.21, 0.33, 0.065, 0.10, -20.0),  # atrium
    (0.17, 0.47, 0.03, 0.11, 15.0),  # occipital horn
    (0.0, 0.12, 0.012, 0.10, 0.0),  # third ventricle (its mirror coincides)
)


def spin_echo(pd, t1, t2, tr, te) -> np.ndarray:
    """Spin-echo magnitude S = PD (1 - exp(-TR/T1)) exp(-TE/T2); broadcasts over arrays."""
    pd, t1, t2 = (np.asarray(value, dtype=np.float64) for value in (pd, t1, t2))
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def tissue_signal(tissue: str, contrast: str) -> float:
    """Noise-free signal of a pure tissue voxel in a contrast."""
    _check_contrast(contrast)
    t1, t2, pd = TISSUES[tissue]
    return float(spin_echo(pd, t1, t2, *SEQUENCES[contrast]))


def tissue_maps(subject_id: int, seed: int = 0, size: int = SIZE) -> dict[str, np.ndarray]:
    """Partial-volume fraction of every tissue in `TISSUES` (float32, sum <= 1; the rest is air)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, subject_id, _ANATOMY_STREAM]))
    scale = size / SIZE
    frame = _Frame.sample(rng, size)
    atrophy = rng.random()  # widens sulci, subarachnoid space and ventricles together
    maps, brain_radius = _shells(rng, frame, atrophy, scale)

    _paint_mirrored_ellipses(rng, maps, "grey_matter", frame, brain_radius, _NUCLEI, 1.0)
    ventricle_size = 0.8 + 0.6 * atrophy
    _paint_mirrored_ellipses(rng, maps, "csf", frame, brain_radius, _VENTRICLES, ventricle_size)
    if rng.random() < LESION_PROBABILITY:
        _paint_lesion(rng, maps, frame, brain_radius, scale)
    return {name: fraction.astype(np.float32) for name, fraction in maps.items()}


def render(subject_id: int, contrast: str, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """One synthetic magnitude slice, float32 (size, size), raw (unnormalised) signal scale."""
    _check_contrast(contrast)
    return _acquire(tissue_maps(subject_id, seed, size), contrast, subject_id, seed)


def unpaired_train(n_per_domain: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """T1 of subjects 0..n-1 and T2 of subjects n..2n-1: two domains with no subject in common."""
    t1 = _stack([render(i, "t1", seed) for i in range(n_per_domain)])
    t2 = _stack([render(n_per_domain + i, "t2", seed) for i in range(n_per_domain)])
    return t1, t2


def paired_test(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """T1 and T2 of the same subjects (ids 1_000_000 + i, never used for training)."""
    t1, t2 = [], []
    for subject_id in range(1_000_000, 1_000_000 + n):
        maps = tissue_maps(subject_id, seed)  # one anatomy, two acquisitions
        t1.append(_acquire(maps, "t1", subject_id, seed))
        t2.append(_acquire(maps, "t2", subject_id, seed))
    return _stack(t1), _stack(t2)


@dataclasses.dataclass(frozen=True)
class _Frame:
    """A subject's head pose and outline, and polar coordinates in which the head is nearly a circle.

    The head ellipse is stretched to a circle of radius sqrt(ab), so (p, q) stay close to pixels
    (p lateral, q antero-posterior with anterior up) and every shell is one radius per angle.
    """

    p: np.ndarray
    q: np.ndarray
    r: np.ndarray
    angle_index: np.ndarray  # each pixel's row in the per-angle tables
    outline: np.ndarray  # scalp radius per angle
    centre: tuple[float, float]  # (row, col) of the head centre
    tilt: float
    stretch: tuple[float, float]  # (p, q) per pixel along the head's axes

    @staticmethod
    def sample(rng: np.random.Generator, size: int) -> "_Frame":
        scale = size / SIZE
        half_length = rng.uniform(100.0, 110.0) * scale  # antero-posterior semi-axis
        half_width = half_length / rng.uniform(1.08, 1.2)
        tilt = float(np.deg2rad(rng.uniform(-12.0, 12.0)))
        centre_row, centre_col = size / 2 + rng.uniform(-6.0, 6.0, size=2) * scale
        radius = float(np.sqrt(half_length * half_width))
        stretch = (radius / half_width, radius / half_length)
        rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
        x, y = cols - np.float32(centre_col), rows - np.float32(centre_row)
        cos, sin = np.float32(np.cos(tilt)), np.float32(np.sin(tilt))
        p = (cos * x + sin * y) * np.float32(stretch[0])
        q = (cos * y - sin * x) * np.float32(stretch[1])
        angle_index = np.rint((np.arctan2(q, p) + np.pi) / _ANGLE_STEP).astype(np.intp) % _ANGLE_SAMPLES
        # Heads are not ellipses: low harmonics add an egg shape and some flattening.
        outline = radius * (1.0 + _harmonics(rng, range(1, 5), 0.012))
        return _Frame(p, q, np.hypot(p, q), angle_index, outline, (centre_row, centre_col), tilt, stretch)

    def inside(self, boundary: np.ndarray, angle_index: np.ndarray | None = None) -> np.ndarray:
        """Partial-volume coverage of r < boundary(angle), from the first-order distance to the boundary."""
        index = self.angle_index if angle_index is None else angle_index
        slope = (np.roll(boundary, -1) - np.roll(boundary, 1)) / (2 * _ANGLE_STEP)
        radius_at = boundary.astype(np.float32)[index]
        slope_at = slope.astype(np.float32)[index]
        distance = (radius_at - self.r) / np.sqrt(1.0 + (slope_at / np.maximum(self.r, 1.0)) ** 2)
        return np.clip(distance + 0.5, 0.0, 1.0)

    def window(self, p: float, q: float, reach: float) -> tuple[slice, slice]:
        """Pixel rows and columns that hold every point within `reach` (in p, q units) of (p, q)."""
        lateral, axial = p / self.stretch[0], q / self.stretch[1]
        row = self.centre[0] + np.sin(self.tilt) * lateral + np.cos(self.tilt) * axial
        col = self.centre[1] + np.cos(self.tilt) * lateral - np.sin(self.tilt) * axial
        pixels = reach / min(self.stretch) + 2
        return (
            slice(max(0, int(row - pixels)), max(0, int(row + pixels) + 1)),
            slice(max(0, int(col - pixels)), max(0, int(col + pixels) + 1)),
        )


def _harmonics(rng: np.random.Generator, orders, amplitude: float) -> np.ndarray:
    """A random periodic profile over `_ANGLES`: cosines of the given orders, random amplitudes and phases."""
    profile = np.zeros_like(_ANGLES)
    for order in orders:
        profile += rng.normal(0.0, amplitude) * np.cos(order * _ANGLES + rng.uniform(0, 2 * np.pi))
    return profile


def _shells(rng: np.random.Generator, frame: _Frame, atrophy: float, scale: float):
    """Scalp, skull (outer table, fatty diploe, inner table), CSF, folded cortex and white matter.

    Returns the tissue fractions and the mean pial radius, the unit of the deep structures.
    """
    temporal = np.cos(_ANGLES) ** 6  # the temporalis muscle sits on the sides of the head
    diploe_weight = 0.4 + 0.6 * np.sin(_ANGLES) ** 2  # the diploe is thickest front and back
    thicknesses = [
        (rng.uniform(1.5, 2.5) + rng.uniform(2.0, 6.0) * temporal) * scale,  # skin and muscle
        rng.uniform(3.0, 6.0) * scale,  # subcutaneous fat
        rng.uniform(1.5, 2.5) * scale,  # outer table
        rng.uniform(1.5, 3.5) * diploe_weight * scale,  # diploe
        rng.uniform(1.5, 2.5) * scale,  # inner table
        (1.5 + 2.5 * atrophy) * scale,  # subarachnoid CSF at the gyral crowns
    ]
    boundaries = [frame.outline]
    for thickness in thicknesses:
        boundaries.append(boundaries[-1] - thickness)
    pial = boundaries[-1] - rng.uniform(0.5, 1.5) * scale * _unit_range(_harmonics(rng, range(4, 12), 1.0))
    brain_radius = float(np.mean(pial))

    cortex = rng.uniform(3.0, 4.0) * scale
    grey_dip = _sulci(rng, brain_radius, atrophy, scale)
    white_dip = _inner_parallel(grey_dip, cortex, brain_radius)
    bent = _bent_angle_index(rng, frame, brain_radius, scale)
    coverages = [frame.inside(b) for b in boundaries[:-1]]
    coverages += [frame.inside(pial - grey_dip, bent), frame.inside(pial - white_dip, bent)]
    for inner in range(1, len(coverages)):
        coverages[inner] = np.minimum(coverages[inner], coverages[inner - 1])  # nested shells stay nested
    head, fat, outer_table, diploe, inner_table, dura, grey, white = coverages

    maps = {
        "csf": dura - grey,
        "grey_matter": grey - white,
        "white_matter": white,
        "fat": (fat - outer_table) + (diploe - inner_table),
        "muscle_skin": head - fat,
        "bone": (outer_table - diploe) + (inner_table - dura),
        "lesion": np.zeros_like(head),
    }
    return maps, brain_radius


def _unit_range(profile: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1]."""
    return (profile - profile.min()) / np.ptp(profile)


def _sulci(rng: np.random.Generator, brain_radius: float, atrophy: float, scale: float) -> np.ndarray:
    """Depth of the cortical surface below the pial envelope, per angle.

    Each sulcus is a narrow parabolic CSF cleft of random depth. The interhemispheric fissure
    reaches towards the corpus callosum and the Sylvian fissures towards the insula.
    """
    count = int(rng.integers(40, 56))
    centres = (np.arange(count) + rng.uniform(-0.35, 0.35, count)) * (2 * np.pi / count) + rng.uniform(0, 2 * np.pi)
    depths = (12.0 + 8.0 * atrophy) * rng.uniform(0.4, 1.0, count) * scale
    clefts = rng.uniform(1.2, 2.5, count) * scale  # half-width of the cleft at the surface
    fissures = np.array([-np.pi / 2, np.pi / 2, -0.3, np.pi + 0.3]) + rng.normal(0.0, 0.03, 4)
    centres = np.concatenate([centres, fissures])
    depths = np.concatenate([depths, np.array([0.55, 0.45, 0.25, 0.25]) * brain_radius])
    clefts = np.concatenate([clefts, rng.uniform(1.5, 3.0, 4) * scale])
    dip = np.zeros_like(_ANGLES)
    for centre, depth, cleft in zip(centres, depths, clefts):
        reach = int(cleft / (brain_radius * _ANGLE_STEP)) + 1
        rows = np.arange(-reach, reach + 1) + int(round((centre + np.pi) / _ANGLE_STEP))
        arc = (rows * _ANGLE_STEP - np.pi - centre) * brain_radius  # pixels from the sulcus centre
        rows %= _ANGLE_SAMPLES
        dip[rows] = np.maximum(dip[rows], depth * np.clip(1.0 - (arc / cleft) ** 2, 0.0, None))
    return dip


def _inner_parallel(depth: np.ndarray, thickness: float, radius: float) -> np.ndarray:
    """Depth of the curve `thickness` pixels inside a surface at `depth` per angle (locally flat).

    A point is this deep inside if no surface point lies within `thickness`, so the cortical
    ribbon keeps its thickness along the sulcal walls and white matter fills the gyri.
    """
    inner = depth + thickness
    for shift in range(1, int(thickness / (radius * _ANGLE_STEP)) + 1):
        rise = np.sqrt(thickness**2 - (shift * radius * _ANGLE_STEP) ** 2)
        inner = np.maximum(inner, np.maximum(np.roll(depth, shift), np.roll(depth, -shift)) + rise)
    return inner


def _bent_angle_index(rng: np.random.Generator, frame: _Frame, brain_radius: float, scale: float) -> np.ndarray:
    """Angle-table rows shifted with depth, so sulci lean and wiggle instead of running straight inwards.

    The lean fades towards the midline so the interhemispheric fissure stays on it.
    """
    lean = (_harmonics(rng, range(2, 7), 0.15) * np.cos(_ANGLES) ** 2).astype(np.float32)[frame.angle_index]
    depth = np.clip(np.float32(brain_radius) - frame.r, 0.0, np.float32(25.0 * scale))
    arc_shift = lean * depth
    wave_angle = _ANGLES.astype(np.float32)[frame.angle_index]
    for _ in range(2):
        order = rng.integers(3, 12)
        wavelength = np.float32(rng.uniform(8.0, 20.0) * scale)
        amplitude = np.float32(rng.uniform(0.8, 2.0) * scale)
        phase = np.float32(rng.uniform(0, 2 * np.pi))
        arc_shift += amplitude * np.sin(order * wave_angle + frame.r / wavelength + phase)
    shift = np.rint(arc_shift / (np.maximum(frame.r, 1.0) * _ANGLE_STEP)).astype(np.intp)
    return (frame.angle_index + shift) % _ANGLE_SAMPLES


def _paint(maps, tissue: str, coverage: np.ndarray, where: tuple[slice, slice], replaced=_BRAIN_TISSUES) -> None:
    """Turn the `replaced` tissues into `tissue` on `coverage` (given on the `where` window).

    Only brain tissue is replaced, so skull and air stay and the fractions keep their sum.
    """
    replaced_total = sum(maps[name][where] for name in replaced)
    for name in replaced:
        maps[name][where] *= 1.0 - coverage
    maps[tissue][where] += coverage * replaced_total


def _paint_mirrored_ellipses(rng, maps, tissue, frame, brain_radius, structures, size_factor: float) -> None:
    """Paint left/right pairs of tilted ellipses (given in brain radii), each side jittered for asymmetry."""
    for centre_x, centre_y, semi_x, semi_y, tilt_degrees in structures:
        for side in (1.0, -1.0):
            shift_x, shift_y = rng.normal(0.0, 0.01, size=2)
            factor = size_factor * rng.uniform(0.9, 1.1)
            centre_p = (side * centre_x + shift_x) * brain_radius
            centre_q = (centre_y + shift_y) * brain_radius
            semi_p, semi_q = semi_x * factor * brain_radius, semi_y * factor * brain_radius
            where = frame.window(centre_p, centre_q, max(semi_p, semi_q) + 1.0)
            tilt = side * np.deg2rad(tilt_degrees)
            dp, dq = frame.p[where] - np.float32(centre_p), frame.q[where] - np.float32(centre_q)
            u = (np.float32(np.cos(tilt)) * dp + np.float32(np.sin(tilt)) * dq) / np.float32(semi_p)
            v = (np.float32(np.cos(tilt)) * dq - np.float32(np.sin(tilt)) * dp) / np.float32(semi_q)
            rho = np.hypot(u, v)
            # First-order distance to the rim in pixels: (1 - rho) / |grad rho|.
            gradient = np.hypot(u / np.float32(semi_p), v / np.float32(semi_q)) / np.maximum(rho, 1e-6)
            distance = (1.0 - rho) / np.maximum(gradient, 1e-6)
            _paint(maps, tissue, np.clip(distance + 0.5, 0.0, 1.0), where)


def _paint_lesion(rng: np.random.Generator, maps, frame: _Frame, brain_radius: float, scale: float) -> None:
    """An irregular white-matter lesion: a radius with low-order harmonics around a random centre.

    It replaces white matter only, so it never covers ventricles, nuclei or cortex.
    """
    direction = rng.uniform(0, 2 * np.pi)
    distance = rng.uniform(0.4, 0.62) * brain_radius  # outside the nuclei, inside the deepest sulci
    centre_p, centre_q = distance * np.cos(direction), distance * np.sin(direction)
    outline = rng.uniform(3.0, 8.0) * scale * (1.0 + _harmonics(rng, range(2, 5), 0.12))
    where = frame.window(centre_p, centre_q, float(outline.max()) + 1.0)
    dp, dq = frame.p[where] - np.float32(centre_p), frame.q[where] - np.float32(centre_q)
    index = np.rint((np.arctan2(dq, dp) + np.pi) / _ANGLE_STEP).astype(np.intp) % _ANGLE_SAMPLES
    coverage = np.clip(outline.astype(np.float32)[index] - np.hypot(dp, dq) + 0.5, 0.0, 1.0)
    _paint(maps, "lesion", coverage, where, replaced=("white_matter",))


def _acquire(maps: dict[str, np.ndarray], contrast: str, subject_id: int, seed: int) -> np.ndarray:
    """Signal equation per tissue, point-spread blur, bias field, Rician noise: a magnitude image."""
    contrast_code = list(SEQUENCES).index(contrast) + 1
    rng = np.random.default_rng(np.random.SeedSequence([seed, subject_id, _ACQUISITION_STREAM, contrast_code]))
    signal = sum(maps[name] * np.float32(tissue_signal(name, contrast)) for name in TISSUES)
    size = signal.shape[0]
    signal = _gaussian_blur(signal, PSF_SIGMA * size / SIZE) * _bias_field(rng, size)
    sigma = np.float32(rng.uniform(*NOISE_FRACTION) * tissue_signal("white_matter", contrast))
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.hypot(real, imaginary).astype(np.float32)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur by shifted sums; zero padding, since outside the field of view is air."""
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    height, width = image.shape
    padded = np.pad(image, radius)
    rows = sum(w * padded[radius + o : radius + o + height, :] for w, o in zip(kernel, offsets))
    return sum(w * rows[:, radius + o : radius + o + width] for w, o in zip(kernel, offsets))


def _bias_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth multiplicative receive-coil gain: exp of a random quadratic with max |log gain| in BIAS_AMPLITUDE."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    x, y = axis[None, :], axis[:, None]
    c = rng.normal(size=5).astype(np.float32)
    log_gain = c[0] * x + c[1] * y + c[2] * x * y + c[3] * (x * x - 1 / 3) + c[4] * (y * y - 1 / 3)
    log_gain *= np.float32(rng.uniform(*BIAS_AMPLITUDE)) / np.abs(log_gain).max()
    return np.exp(log_gain)


def _check_contrast(contrast: str) -> None:
    if contrast not in SEQUENCES:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of {sorted(SEQUENCES)}")


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """Stack slices into [n, SIZE, SIZE] float32, also when n == 0."""
    return np.stack(images) if images else np.zeros((0, SIZE, SIZE), np.float32)
