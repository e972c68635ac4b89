"""Metrics against known values, scikit-image (the reference the protocol names) and hand sums."""

import math
from pathlib import Path

import nibabel
import numpy as np
import pytest
import scipy.ndimage as ndimage  # installed with scikit-image
import skimage.metrics as skimage_metrics  # a dev dependency: missing means a broken install, a failure
import tensorflow as tf
from PIL import Image

from data.preprocess import normalize
from evaluation import metrics

BORDER = 5  # (win_size - 1) // 2 for skimage's 11-tap window
# Float64 sums over ~10^4 pixels in another order than the reference: measured at most 1.7e-13
# relative (SSIM of the BrainWeb pair, whose value is 0.025), everything else below 3e-15.
FLOAT64_RTOL = 1e-12
# tf.image.ssim computes in float32: measured 1.0e-5 absolute on the BrainWeb pair (SSIM 0.025,
# where E[x^2] - E[x]^2 cancels most), 1.4e-6 relative on the IXI pair, 1e-7 on the synthetic ones.
TF_SSIM_ATOL = 2e-5


def skimage_ssim(target, prediction, full=False):
    return skimage_metrics.structural_similarity(
        target, prediction, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, full=full
    )


def random_pair(seed=0, shape=(96, 80)):
    rng = np.random.default_rng(seed)
    target = rng.random(shape)
    return target, np.clip(target + 0.2 * rng.standard_normal(shape), 0, 1)


def smooth_pair(seed=1, shape=(128, 128)):
    """Structured images with a zero background, like skull-stripped MRI."""
    rng = np.random.default_rng(seed)
    target = ndimage.gaussian_filter(rng.random(shape), 3)
    target = np.clip((target - target.mean()) / target.std() * 0.3 + 0.3, 0, 1)
    prediction = np.clip(ndimage.gaussian_filter(target, 1.2) + 0.03 * rng.standard_normal(shape), 0, 1)
    return target, prediction


def ixi_pair(shared_data: Path):
    """IXI002 slice 90: T2 target, T1 'prediction' (same grid), both normalised like the pipeline."""
    folder = shared_data / "ixi002-slice90"
    t1 = normalize(nibabel.load(folder / "IXI002-Guys-0828-T1_slice90.nii.gz").get_fdata())
    t2 = normalize(nibabel.load(folder / "IXI002-Guys-0828-T2_slice90.nii.gz").get_fdata())
    return t2.astype(np.float64), t1.astype(np.float64)


def png_pair(shared_data: Path):
    """The paired BrainWeb PNG slice #100: T1 target, T2 'prediction'."""
    folder = shared_data / "mri-t1t2-slices"
    t1 = np.asarray(Image.open(folder / "Tr1" / "TrainT1" / "Image #100.png").convert("F"))
    t2 = np.asarray(Image.open(folder / "Tr2" / "TrainT2" / "Image #100.png").convert("F"))
    return normalize(t1).astype(np.float64), normalize(t2).astype(np.float64)


SYNTHETIC_PAIRS = {"random": random_pair, "smooth": smooth_pair}
REAL_PAIRS = {"ixi": ixi_pair, "png": png_pair}  # from ../shared/data (the shared_data fixture skips only without it)


@pytest.fixture(params=sorted({**SYNTHETIC_PAIRS, **REAL_PAIRS}))
def pair(request):
    if request.param in REAL_PAIRS:
        return REAL_PAIRS[request.param](request.getfixturevalue("shared_data"))
    return SYNTHETIC_PAIRS[request.param]()


def test_identical_images():
    target, _ = smooth_pair()
    assert (target == 0).any() and (target > 0).any()
    values = metrics.slice_metrics(target, target.copy(), metrics.METRICS)
    for suffix in ("", "_fg"):
        assert values["ssim" + suffix] == 1.0  # numerator and denominator are the same products
        assert values["psnr" + suffix] == 100.0
        assert values["mae" + suffix] == 0.0
        assert values["mse" + suffix] == 0.0
        assert values["nrmse" + suffix] == 0.0


def test_constant_offset():
    target = np.random.default_rng(2).random((64, 64)) * 0.9
    values = metrics.slice_metrics(target, target + 0.1, ["mae", "mse", "psnr"])
    for suffix in ("", "_fg"):
        assert values["mae" + suffix] == pytest.approx(0.1, rel=FLOAT64_RTOL)
        assert values["mse" + suffix] == pytest.approx(0.01, rel=FLOAT64_RTOL)
        assert values["psnr" + suffix] == pytest.approx(20.0, rel=FLOAT64_RTOL)


def test_matches_skimage(pair):
    target, prediction = pair
    values = metrics.slice_metrics(target, prediction, metrics.METRICS)
    reference = {
        "ssim": skimage_ssim(target, prediction),
        "psnr": skimage_metrics.peak_signal_noise_ratio(target, prediction, data_range=1),
        "mse": skimage_metrics.mean_squared_error(target, prediction),
        "nrmse": skimage_metrics.normalized_root_mse(target, prediction),
        "mae": np.mean(np.abs(target - prediction)),
    }
    for name, value in reference.items():
        assert values[name] == pytest.approx(value, rel=FLOAT64_RTOL), name
    assert 0.0 < values["ssim"] < 0.999  # the pairs differ, so agreeing on 1.0 would prove nothing


def test_foreground_variants(pair):
    target, prediction = pair
    foreground = target > 0
    assert foreground.any()
    values = metrics.slice_metrics(target, prediction, [name + "_fg" for name in metrics.METRICS])
    error = (target - prediction)[foreground]
    mse = np.sum(error**2) / foreground.sum()
    _, ssim_map = skimage_ssim(target, prediction, full=True)
    interior = (slice(BORDER, -BORDER),) * 2
    reference = {
        "mse_fg": mse,
        "mae_fg": np.sum(np.abs(error)) / foreground.sum(),
        "psnr_fg": -10 * math.log10(mse),
        "nrmse_fg": np.linalg.norm(error) / np.linalg.norm(target[foreground]),
        "ssim_fg": ssim_map[interior][foreground[interior]].mean(),
    }
    for name, value in reference.items():
        assert values[name] == pytest.approx(value, rel=FLOAT64_RTOL), name


def test_foreground_differs_from_full_image_on_real_slice(shared_data):
    target, prediction = png_pair(shared_data)
    values = metrics.slice_metrics(target, prediction, ["ssim", "mae"])
    assert (target == 0).mean() > 0.2  # BrainWeb has an exactly-zero background
    assert values["mae_fg"] > values["mae"]  # background error is ~0, so restricting raises the mean
    assert values["ssim_fg"] != pytest.approx(values["ssim"], abs=1e-3)


def test_ssim_fg_equals_ssim_when_all_foreground():
    target, prediction = random_pair()
    target = np.clip(target, 1e-3, 1)
    values = metrics.slice_metrics(target, prediction, ["ssim"])
    assert values["ssim_fg"] == values["ssim"]  # the same pixels, averaged in the same order


def test_empty_foreground_gives_nan():
    target = np.zeros((32, 32))
    prediction = np.full((32, 32), 0.5)
    values = metrics.slice_metrics(target, prediction, metrics.METRICS)
    assert all(math.isnan(values[name + "_fg"]) for name in metrics.METRICS)
    assert math.isnan(values["nrmse"])  # ||target|| = 0
    assert values["mse"] == 0.25
    # Flat images: only the luminance term is left, C1 / (0.5^2 + C1) with C1 = 0.01^2.
    assert values["ssim"] == pytest.approx(1e-4 / (0.25 + 1e-4), rel=FLOAT64_RTOL)


def test_ssim_fg_nan_when_foreground_only_in_border():
    target = np.zeros((32, 32))
    target[:BORDER, :] = 0.7
    values = metrics.slice_metrics(target, target, ["ssim", "mae"])
    assert math.isnan(values["ssim_fg"])
    assert values["mae_fg"] == 0.0


def test_tf_image_ssim_agrees(pair):
    """The protocol cites tf.image.ssim ('valid' filtering, as here); it agrees to float32 precision."""
    target, prediction = pair
    reference = float(tf.image.ssim(target[..., None], prediction[..., None], max_val=1.0))
    assert metrics.slice_metrics(target, prediction, ["ssim"])["ssim"] == pytest.approx(reference, abs=TF_SSIM_ATOL)


def test_returns_requested_metrics_and_foreground_variants_in_order():
    target, prediction = random_pair()
    assert list(metrics.slice_metrics(target, prediction, ["psnr", "ssim_fg"])) == [
        "psnr",
        "psnr_fg",
        "ssim",
        "ssim_fg",
    ]


def test_rejects_mismatched_or_tiny_images():
    with pytest.raises(ValueError, match="same shape"):
        metrics.slice_metrics(np.zeros((32, 32)), np.zeros((32, 31)), ["mae"])
    with pytest.raises(ValueError, match="at least 11"):
        metrics.slice_metrics(np.zeros((10, 32)), np.zeros((10, 32)), ["mae"])


def test_summarize_two_subjects_with_nan():
    rows = [
        {"subject": "a", "mae": 1.0, "mae_fg": 2.0},
        {"subject": "a", "mae": 2.0, "mae_fg": float("nan")},
        {"subject": "a", "mae": 3.0, "mae_fg": 4.0},
        {"subject": "b", "mae": 10.0, "mae_fg": float("nan")},
    ]
    summary = metrics.summarize(rows, ["mae"])
    assert set(summary) == {"mae", "mae_fg"}

    mae = summary["mae"]
    assert mae["mean"] == pytest.approx(4.0, rel=FLOAT64_RTOL)  # (1 + 2 + 3 + 10) / 4
    assert mae["std"] == pytest.approx(math.sqrt((9 + 4 + 1 + 36) / 4), rel=FLOAT64_RTOL)
    assert mae["n"] == 4
    assert mae["subject_mean"] == pytest.approx(6.0, rel=FLOAT64_RTOL)  # subject means 2 and 10
    assert mae["subject_std"] == pytest.approx(4.0, rel=FLOAT64_RTOL)
    assert mae["n_subjects"] == 2

    mae_fg = summary["mae_fg"]  # subject b has no valid value, so it drops out
    assert mae_fg["mean"] == pytest.approx(3.0, rel=FLOAT64_RTOL)
    assert mae_fg["std"] == pytest.approx(1.0, rel=FLOAT64_RTOL)
    assert mae_fg["n"] == 2
    assert mae_fg["subject_mean"] == pytest.approx(3.0, rel=FLOAT64_RTOL)
    assert mae_fg["subject_std"] == 0.0
    assert mae_fg["n_subjects"] == 1


def test_summarize_custom_group_key_and_all_nan():
    rows = [
        {"volume": "x", "psnr": float("nan"), "psnr_fg": 30.0},
        {"volume": "y", "psnr": float("nan"), "psnr_fg": 40.0},
    ]
    summary = metrics.summarize(rows, ["psnr_fg"], group_key="volume")
    assert summary["psnr_fg"]["subject_mean"] == pytest.approx(35.0, rel=FLOAT64_RTOL)
    assert summary["psnr_fg"]["n_subjects"] == 2
    assert math.isnan(summary["psnr"]["mean"]) and summary["psnr"]["n"] == 0
    assert summary["psnr"]["n_subjects"] == 0


def test_parse_metrics():
    assert metrics.parse_metrics("ssim,psnr") == ["ssim", "psnr"]
    assert metrics.parse_metrics(" mae , nrmse_fg,mae") == ["mae", "nrmse_fg"]
    with pytest.raises(ValueError, match="ssmi") as error:
        metrics.parse_metrics("ssim,ssmi")
    assert all(name in str(error.value) for name in metrics.METRICS + ("ssim_fg",))
    with pytest.raises(ValueError, match="no metric"):
        metrics.parse_metrics(" , ")
