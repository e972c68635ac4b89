"""evaluate.py end to end: the run's own synthetic test split, and 16-bit PNG folders checked with scikit-image."""

import json
import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data import phantom
from tests.helpers import checkpoint_step, script, summaries

skimage_metrics = pytest.importorskip("skimage.metrics")

DIRECTIONS = ("t1_to_t2", "t2_to_t1")
# Per test subject: the image size (smaller, equal to and larger than the 256 canvas) and the uint16
# peak of its T1 and T2 PNGs, so the per-image normalisation has different ranges to undo.
SIZES = ((200, 230), (256, 256), (288, 270))
PEAKS = ((1000, 30000), (65535, 4000), (12000, 20000))
TOLERANCE = 1e-3


def fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop or zero-pad to height x width."""
    out = np.zeros((height, width), image.dtype)
    h, w = min(height, image.shape[0]), min(width, image.shape[1])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    out_top, out_left = (height - h) // 2, (width - w) // 2
    out[out_top : out_top + h, out_left : out_left + w] = image[top : top + h, left : left + w]
    return out


def write_png_pairs(folder, same_contrast: bool = False) -> tuple[str, str]:
    """testA/caseN.png (T1) and testB/caseN.png (T2, or a copy of T1) as 16-bit PNGs."""
    t1, t2 = phantom.paired_test(len(SIZES))
    dir_a, dir_b = folder / "testA", folder / "testB"
    dir_a.mkdir()
    dir_b.mkdir()
    for i, (a, b, size, peaks) in enumerate(zip(t1, t2, SIZES, PEAKS)):
        for image, directory, peak in ((a, dir_a, peaks[0]), (b, dir_b, peaks[1])):
            raw = np.round(fit(image, *size) / image.max() * peak).astype(np.uint16)
            Image.fromarray(raw).save(directory / f"case{i}.png")
    if same_contrast:
        shutil.rmtree(dir_b)
        shutil.copytree(dir_a, dir_b)
    return str(dir_a), str(dir_b)


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64)


def normalise(raw: np.ndarray) -> np.ndarray:
    """The protocol's normalisation, written independently of data/preprocess.py."""
    raw = np.maximum(raw, 0)
    return np.clip(raw / np.percentile(raw[raw > 0], 99.5), 0, 1)


def skimage_values(target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    return {
        "ssim": skimage_metrics.structural_similarity(target, prediction, gaussian_weights=True, sigma=1.5,
                                                      use_sample_covariance=False, data_range=1),
        "psnr": skimage_metrics.peak_signal_noise_ratio(target, prediction, data_range=1),
        "mae": float(np.mean(np.abs(target - prediction))),
    }


def mean_values(pairs) -> dict[str, float]:
    values = [skimage_values(target, prediction) for target, prediction in pairs]
    return {name: float(np.mean([v[name] for v in values])) for name in values[0]}


def evaluate(*args: str):
    result = script("evaluate.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def load_report(output_dir) -> dict:
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return json.load(f)


def test_defaults_evaluate_the_runs_synthetic_test_split(trained_run):
    result = evaluate("--metrics", "ssim,psnr", f"--logdir={trained_run}")
    for row in ("t1_to_t2", "t2_to_t1", "baseline_identity/t1_to_t2", "baseline_identity/t2_to_t1", "t1_cycle",
                "t2_cycle"):
        assert any(line.startswith(row + " ") and "±" in line for line in result.stdout.splitlines()), result.stdout
    output_dir = os.path.join(trained_run, "eval")
    report = load_report(output_dir)
    step = checkpoint_step(trained_run)
    assert report["checkpoint_step"] == step
    models = {name: report[name] for name in (*DIRECTIONS, "t1_cycle", "t2_cycle")}
    baselines = {f"baseline_identity/{d}": report["baseline_identity"][d] for d in DIRECTIONS}
    tags = summaries(output_dir)
    for name, entry in {**models, **baselines}.items():
        for metric in ("ssim", "psnr"):
            stats = entry[metric]
            assert stats["n"] == 2  # QUICK: --synthetic_test_subjects=2, one slice each
            assert math.isfinite(stats["mean"]) and math.isfinite(stats["std"])
            assert tags[f"eval/{name}/{metric}"] == {step: pytest.approx(stats["mean"], rel=1e-6)}
    with open(os.path.join(output_dir, "metrics.csv")) as f:
        assert len(f.read().splitlines()) == 1 + 6 * 2  # header, 6 evaluations x 2 slices
    assert Image.open(os.path.join(output_dir, "examples.png")).size == (3 * 256, 2 * 2 * 256)


def test_png_folders_match_scikit_image(trained_run, tmp_path):
    test_a, test_b = write_png_pairs(tmp_path)
    output_dir = tmp_path / "out"
    evaluate(f"--logdir={trained_run}", f"--test_a={test_a}", f"--test_b={test_b}", "--save_predictions",
             "--metrics=ssim,psnr,mae", f"--output_dir={output_dir}")
    report = load_report(output_dir)
    names = [f"case{i}.png" for i in range(len(SIZES))]
    folders = {"t1_to_t2": (test_a, test_b), "t2_to_t1": (test_b, test_a)}  # (source, target)
    for direction, (source_dir, target_dir) in folders.items():
        sources = [normalise(read_png(os.path.join(source_dir, n))) for n in names]
        targets = [normalise(read_png(os.path.join(target_dir, n))) for n in names]
        # (1) The identity baseline: the normalised source as the prediction of the normalised target.
        for metric, value in mean_values(zip(targets, sources)).items():
            assert report["baseline_identity"][direction][metric]["mean"] == pytest.approx(value, abs=TOLERANCE)
            assert report["baseline_identity"][direction][metric]["n"] == len(SIZES)
        # (2) The model: its saved 16-bit predictions against the normalised targets, on the original grid;
        # the cycle reconstruction against the source.
        cycle = direction[:2] + "_cycle"
        for name, references in ((direction, targets), (cycle, sources)):
            predictions = [read_png(output_dir / "predictions" / name / n) / 65535 for n in names]
            assert [p.shape for p in predictions] == list(SIZES)
            for metric, value in mean_values(zip(references, predictions)).items():
                assert report[name][metric]["mean"] == pytest.approx(value, abs=TOLERANCE), (name, metric)


def test_identical_data_gives_a_perfect_baseline(trained_run, tmp_path):
    test_a, test_b = write_png_pairs(tmp_path, same_contrast=True)
    output_dir = tmp_path / "out"
    evaluate(f"--logdir={trained_run}", f"--test_a={test_a}", f"--test_b={test_b}", f"--output_dir={output_dir}")
    baseline = load_report(output_dir)["baseline_identity"]
    for direction in DIRECTIONS:
        assert baseline[direction]["ssim"]["mean"] == pytest.approx(1.0, abs=1e-12)
        assert baseline[direction]["psnr"]["mean"] == 100.0  # the documented cap (training/metrics.py)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--metrics=foo",), "unknown metric"),
        (("--test_a=/nowhere",), "give both --test_a and --test_b"),
    ],
)
def test_bad_arguments_give_one_line_errors(trained_run, tmp_path, args, message):
    result = script("evaluate.py", f"--logdir={trained_run}", f"--output_dir={tmp_path}", *args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and message in result.stderr


def test_logdir_without_checkpoint_is_a_one_line_error(tmp_path):
    result = script("evaluate.py", f"--logdir={tmp_path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: no checkpoint in")


@pytest.mark.parametrize("inside", [False, True], ids=["is_a_file", "under_a_file"])
def test_output_dir_that_is_a_file_fails_before_inference(trained_run, tmp_path, inside):
    """A file as --output_dir (or as its parent) stops with one line before any model is loaded."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    output_dir = blocker / "eval" if inside else blocker
    result = script("evaluate.py", f"--logdir={trained_run}", f"--output_dir={output_dir}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: --output_dir={output_dir}"), last_line
    assert "test data:" not in result.stderr  # stopped before reading the test data and running the generators
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("flag", ["--batch_size=0", "--examples=-1"])
def test_out_of_range_integer_flags_are_refused_by_the_flag_parser(tmp_path, flag):
    result = script("evaluate.py", f"--logdir={tmp_path}", flag)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"Flags parsing error: flag {flag}" in result.stderr, result.stderr[-2000:]
