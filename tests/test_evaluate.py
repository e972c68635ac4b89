"""evaluate.py end to end, its values checked against scikit-image and an independent forward pass of the
checkpoint's generators: the run's synthetic test split, 16-bit PNG folders and each --data_dir layout."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import skimage.metrics as skimage_metrics  # a dev dependency: missing means a broken install, a failure
import tensorflow as tf
from PIL import Image

from data import layouts, masks, phantom
from evaluation import protocol, report
from models.networks import build_generator
from rundir import flagfile
from tests.helpers import NARROW_FILTERS, checkpoint_step, script, summaries
from tests.test_masks import reference_air

DIRECTIONS = ("t1_to_t2", "t2_to_t1")
CYCLES = {"t1_to_t2": "t1_cycle", "t2_to_t1": "t2_cycle"}
ALL_METRICS = "ssim,psnr,mae,mse,nrmse"
CANVAS = 256
# The trained_run's test split (QUICK: --synthetic_test_subjects=2, seed 0), one slice per subject.
SYNTHETIC_TEST_SUBJECTS = 2
# Per-slice agreement of evaluate.py with the references here, which normalise in float64 (the
# pipeline in float32) and run the generators eagerly (evaluate.py in a tf.function). SSIM lies in
# [-1, 1] and is often near 0 here (untrained generators), so its error is absolute; the others are
# relative. Measured over the synthetic, PNG and NIfTI-layout tests: SSIM at most 5.9e-8 absolute,
# the others at most 1.9e-7 relative (MSE of a padded 64 px slice).
TOLERANCE = {"ssim": {"abs": 3e-7}, **{metric: {"rel": 1e-6} for metric in ("psnr", "mae", "mse", "nrmse")}}
# Metrics recomputed from the saved 16-bit PNG predictions, which are off by up to 0.5 / 65535 per
# pixel: measured SSIM at most 1.6e-7 absolute, the others at most 1.9e-7 relative.
PNG16_TOLERANCE = {**TOLERANCE, "ssim": {"abs": 8e-7}}
# The saved PNG against the eager forward pass: half a 16-bit level, plus the tf.function difference
# (measured 0.054 levels, 8.2e-7).
PNG16_ATOL = 0.5 / 65535 + 2e-6
# float32 TensorBoard scalars: rounding to nearest is within 2^-24 (6e-8) relative.
FLOAT32_RTOL = 1e-7
# Per test subject: the image size (smaller, equal to and larger than the 256 canvas) and the uint16
# peak of its T1 and T2 PNGs, so the per-image normalisation has different ranges to undo.
SIZES = ((200, 230), (256, 256), (288, 270))
PEAKS = ((1000, 30000), (65535, 4000), (12000, 20000))
# NIfTI layouts: two subjects with this many non-empty axial slices (plus one empty slice the
# foreground filter drops), so the pair count tells which subject is the test split.
NONEMPTY_SLICES = (3, 2)
VOLUME_SIDE = 64  # phantom slices downsampled 4x: the canvas padding is exercised
T1_PEAK, T2_PEAK = 800.0, 2500.0


# ------------------------------------------------------------------ references, written independently


def normalise(raw: np.ndarray) -> np.ndarray:
    """The protocol's normalisation, written independently of data/preprocess.py (float64)."""
    raw = np.maximum(np.asarray(raw, np.float64), 0)
    return np.clip(raw / np.percentile(raw[raw > 0], 99.5), 0, 1)


def reference_metrics(target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    target, prediction = np.asarray(target, np.float64), np.asarray(prediction, np.float64)
    return {
        "ssim": skimage_metrics.structural_similarity(target, prediction, gaussian_weights=True, sigma=1.5,
                                                      use_sample_covariance=False, data_range=1),
        "psnr": skimage_metrics.peak_signal_noise_ratio(target, prediction, data_range=1),
        "mae": float(np.mean(np.abs(target - prediction))),
        "mse": skimage_metrics.mean_squared_error(target, prediction),
        "nrmse": skimage_metrics.normalized_root_mse(target, prediction),
    }


def assert_rows_match(rows: list[dict], expected: list[tuple[np.ndarray, np.ndarray]], tolerance: dict, what: str):
    """Each CSV row's metrics equal the reference metrics of its (target, prediction), to tolerance[metric]."""
    assert len(rows) == len(expected), what
    for row, (target, prediction) in zip(rows, expected):
        for metric, value in reference_metrics(target, prediction).items():
            assert float(row[metric]) == pytest.approx(value, **tolerance[metric]), (what, row["slice"], metric)


def pad_to_canvas(image: np.ndarray) -> np.ndarray:
    """Zero-pad a slice of at most 256 px a side to the centre of the canvas."""
    canvas = np.zeros((CANVAS, CANVAS), np.float32)
    top, left = (CANVAS - image.shape[0]) // 2, (CANVAS - image.shape[1]) // 2
    canvas[top : top + image.shape[0], left : left + image.shape[1]] = image
    return canvas


def crop_from_canvas(canvas: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    top, left = (CANVAS - shape[0]) // 2, (CANVAS - shape[1]) // 2
    return canvas[top : top + shape[0], left : left + shape[1]]


def run_generator(generator, canvas: np.ndarray) -> np.ndarray:
    """A [0, 1] canvas through a Keras generator ([-1, 1] in and out), back to [0, 1]."""
    signed = generator(np.asarray(canvas, np.float32)[np.newaxis, ..., np.newaxis] * 2 - 1, training=False)
    return np.clip((signed.numpy()[0, ..., 0] + 1) / 2, 0, 1)


@pytest.fixture(scope="session")
def checkpoint_generators(trained_run) -> dict:
    """The checkpoint's G (T1 -> T2) and F (T2 -> T1) at the run's narrow width, restored by their names in the file,
    not via models.inference.

    Session-scoped, not module-scoped: restored in seconds (at most once per pytest-xdist worker), so that this
    module's evaluate.py processes are spread over the workers instead of being grouped on one (tests/conftest.py)."""
    generator_g, generator_f = build_generator("g", NARROW_FILTERS), build_generator("f", NARROW_FILTERS)
    path = tf.train.latest_checkpoint(os.path.join(trained_run, "checkpoints"))
    tf.train.Checkpoint(generator_g=generator_g, generator_f=generator_f).restore(path).expect_partial() \
        .assert_existing_objects_matched()
    return {"t1_to_t2": generator_g, "t2_to_t1": generator_f}


def synthetic_test_split() -> dict[str, list[np.ndarray]]:
    """The trained_run's paired test slices (256 x 256, so canvas = original grid), per source contrast."""
    t1, t2 = phantom.paired_test(SYNTHETIC_TEST_SUBJECTS, 0)
    return {"t1_to_t2": [normalise(image) for image in t1], "t2_to_t1": [normalise(image) for image in t2]}


def without_air(prediction: np.ndarray, source: np.ndarray) -> np.ndarray:
    """The air mask evaluate.py applies by default: 0 where the source is air (tests/test_masks.reference_air)."""
    return np.where(reference_air(source), 0.0, prediction)


def expected_comparisons(generators: dict, slices: dict, direction: str) -> dict[str, list]:
    """Evaluation name -> (target, prediction) per slice: G or F (0 in the source's air), the identity baseline and
    the cycle (from the masked translation, masked again)."""
    reverse = DIRECTIONS[1 - DIRECTIONS.index(direction)]
    sources, targets = slices[direction], slices[reverse]
    translated = [without_air(run_generator(generators[direction], source), source) for source in sources]
    reconstructed = [without_air(run_generator(generators[reverse], canvas), source)
                     for canvas, source in zip(translated, sources)]
    return {
        direction: list(zip(targets, translated)),
        f"baseline_identity/{direction}": list(zip(targets, sources)),
        CYCLES[direction]: list(zip(sources, reconstructed)),
    }


# ------------------------------------------------------------------ running evaluate.py and reading what it wrote


def evaluate(*args: str):
    result = script("evaluate.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def load_report(output_dir) -> dict:
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return json.load(f)


def csv_rows(output_dir) -> dict[str, list[dict]]:
    """metrics.csv rows grouped by evaluation name, in file order."""
    grouped = {}
    with open(os.path.join(output_dir, "metrics.csv"), newline="") as f:
        for row in csv.DictReader(f):
            grouped.setdefault(row["direction"], []).append(row)
    return grouped


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64)


# ------------------------------------------------------------------ the run's own synthetic test split


def test_defaults_evaluate_the_runs_synthetic_test_split(trained_run, checkpoint_generators, tmp_path):
    # A logdir of its own (the shared run's checkpoints and flags): every evaluation of a run writes its TensorBoard
    # scalars to <logdir>/eval at the checkpoint's step, and other tests evaluate the shared run at the same time.
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(os.path.join(trained_run, "checkpoints"), run / "checkpoints")
    shutil.copy(os.path.join(trained_run, flagfile.FLAGFILE), run / flagfile.FLAGFILE)
    result = evaluate("--metrics", ALL_METRICS, f"--logdir={run}")
    output_dir = os.path.join(run, "eval")
    step = checkpoint_step(trained_run)
    report_json = load_report(output_dir)
    assert report_json["checkpoint_step"] == step
    assert report_json["data"] == {"test": "synthetic phantoms: 2 test subjects, seed 0", "pairs": 2, "subjects": 2,
                                   "register": "world"}
    assert report_json["air_mask"] is True and report_json["foreground_mask"]["mask"] == "auto"
    assert report_json["foreground_mask"]["threshold"] == 0.1

    slices = synthetic_test_split()
    expected = {name: pairs for d in DIRECTIONS for name, pairs in expected_comparisons(checkpoint_generators,
                                                                                         slices, d).items()}
    rows = csv_rows(output_dir)
    assert list(rows) == [name for d in DIRECTIONS for name in (d, f"baseline_identity/{d}", f"baseline_histogram/{d}",
                                                                f"baseline_reversed_histogram/{d}",
                                                                f"oracle_intensity_map/{d}", CYCLES[d])]
    tags = summaries(output_dir)
    for name, pairs in expected.items():
        assert [row["subject"] for row in rows[name]] == ["synthetic-1000000", "synthetic-1000001"]
        assert_rows_match(rows[name], pairs, TOLERANCE, name)
        head, _, tail = name.partition("/")
        entry = report_json[head][tail] if tail else report_json[name]
        for metric in ALL_METRICS.split(","):
            values = [float(row[metric]) for row in rows[name]]
            stats = entry[metric]
            assert (stats["n"], stats["n_subjects"]) == (2, 2)
            assert stats["mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert stats["std"] == pytest.approx(np.std(values), rel=1e-12)
            assert tags[f"eval/{name}/{metric}"] == {step: pytest.approx(stats["mean"], rel=FLOAT32_RTOL)}
            table_line = next(line for line in result.stdout.splitlines() if line.startswith(name + " "))
            assert report.format_value(metric, stats["mean"]) + " ± " in table_line
    examples = np.asarray(Image.open(os.path.join(output_dir, "examples.png")))
    assert examples.shape == (2 * 2 * CANVAS, 3 * CANVAS)  # 2 pairs x 2 directions, source | translated | target


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_direction_uses_its_generator(trained_run, checkpoint_generators, tmp_path, direction):
    """--direction=t1_to_t2 runs G (and F for the cycle), t2_to_t1 runs F: a swap changes every model value."""
    output_dir = tmp_path / "out"
    evaluate(f"--logdir={trained_run}", f"--direction={direction}", f"--metrics={ALL_METRICS}",
             f"--output_dir={output_dir}")
    slices = synthetic_test_split()
    expected = expected_comparisons(checkpoint_generators, slices, direction)
    rows = csv_rows(output_dir)
    assert list(rows) == [direction, f"baseline_identity/{direction}", f"baseline_histogram/{direction}",
                          f"baseline_reversed_histogram/{direction}", f"oracle_intensity_map/{direction}",
                          CYCLES[direction]]  # only this direction's
    for name, pairs in expected.items():
        assert_rows_match(rows[name], pairs, TOLERANCE, name)
    report_json = load_report(output_dir)
    assert set(report_json) == {direction, CYCLES[direction], "baseline_identity", "baseline_histogram",
                                "baseline_reversed_histogram", "oracle_intensity_map", "checkpoint", "checkpoint_step",
                                "data", "air_mask", "foreground_mask"}
    assert set(report_json["baseline_identity"]) == {direction}

    # The other generator is far outside the tolerance, so a swapped direction fails the checks above.
    other = DIRECTIONS[1 - DIRECTIONS.index(direction)]
    target, translated = expected[direction][0]
    swapped = reference_metrics(target, without_air(run_generator(checkpoint_generators[other],
                                                                  slices[direction][0]), slices[direction][0]))
    right = reference_metrics(target, translated)
    assert abs(swapped["ssim"] - right["ssim"]) > 100 * TOLERANCE["ssim"]["abs"], (swapped, right)
    assert abs(swapped["mae"] / right["mae"] - 1) > 100 * TOLERANCE["mae"]["rel"], (swapped, right)

    # examples.png: per pair, source | translated | target as 8-bit.
    examples = np.asarray(Image.open(output_dir / "examples.png"), np.int32)
    for i, source in enumerate(slices[direction]):
        row = examples[i * CANVAS : (i + 1) * CANVAS]
        translated_canvas = np.round(expected[direction][i][1] * 255)
        assert np.abs(row[:, CANVAS : 2 * CANVAS] - translated_canvas).max() <= 1  # rounding at .5
        assert np.abs(row[:, :CANVAS] - np.round(source * 255)).max() <= 1
        assert np.abs(row[:, 2 * CANVAS :] - np.round(expected[direction][i][0] * 255)).max() <= 1


# ------------------------------------------------------------------ 16-bit PNG folders


def fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop or zero-pad to height x width."""
    out = np.zeros((height, width), image.dtype)
    h, w = min(height, image.shape[0]), min(width, image.shape[1])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    out_top, out_left = (height - h) // 2, (width - w) // 2
    out[out_top : out_top + h, out_left : out_left + w] = image[top : top + h, left : left + w]
    return out


def write_png_pairs(folder, same_contrast: bool = False, names=("testA", "testB")) -> tuple[str, str]:
    """<names[0]>/caseN.png (T1) and <names[1]>/caseN.png (T2, or a copy of T1) as 16-bit PNGs."""
    t1, t2 = phantom.paired_test(len(SIZES))
    dir_a, dir_b = folder / names[0], folder / names[1]
    dir_a.mkdir(parents=True)
    dir_b.mkdir(parents=True)
    for i, (a, b, size, peaks) in enumerate(zip(t1, t2, SIZES, PEAKS)):
        for image, directory, peak in ((a, dir_a, peaks[0]), (b, dir_b, peaks[1])):
            raw = np.round(fit(image, *size) / image.max() * peak).astype(np.uint16)
            Image.fromarray(raw).save(directory / f"case{i}.png")
    if same_contrast:
        shutil.rmtree(dir_b)
        shutil.copytree(dir_a, dir_b)
    return str(dir_a), str(dir_b)


def png_baseline_comparisons(test_a: str, test_b: str, direction: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(normalised target, normalised source) per caseN.png: the identity baseline's inputs."""
    source_dir, target_dir = (test_a, test_b) if direction == "t1_to_t2" else (test_b, test_a)
    names = [f"case{i}.png" for i in range(len(SIZES))]
    return [(normalise(read_png(os.path.join(target_dir, n))), normalise(read_png(os.path.join(source_dir, n))))
            for n in names]


def test_png_folders_match_scikit_image(trained_run, checkpoint_generators, tmp_path):
    test_a, test_b = write_png_pairs(tmp_path)
    output_dir = tmp_path / "out"
    evaluate(f"--logdir={trained_run}", f"--test_a={test_a}", f"--test_b={test_b}", "--save_predictions",
             f"--metrics={ALL_METRICS}", f"--output_dir={output_dir}")
    rows = csv_rows(output_dir)
    names = [f"case{i}.png" for i in range(len(SIZES))]
    for direction in DIRECTIONS:
        baseline = png_baseline_comparisons(test_a, test_b, direction)
        # (1) The identity baseline: the normalised source as the prediction of the normalised target.
        assert_rows_match(rows[f"baseline_identity/{direction}"], baseline, TOLERANCE, direction)
        # (2) The model: its saved 16-bit predictions on the original grid, against the normalised targets
        # and, for the cycle, the source; the metrics were computed from the unrounded predictions.
        targets, sources = [t for t, _ in baseline], [s for _, s in baseline]
        for name, references in ((direction, targets), (CYCLES[direction], sources)):
            predictions = [read_png(output_dir / "predictions" / name / n) / 65535 for n in names]
            assert [p.shape for p in predictions] == list(SIZES)
            assert_rows_match(rows[name], list(zip(references, predictions)), PNG16_TOLERANCE, name)
        # (3) Where no resizing is involved (images up to 256 px), the saved translation is G's or F's output,
        # cropped back from the canvas.
        for n, source, size in zip(names, sources, SIZES):
            if max(size) <= CANVAS:
                expected = without_air(crop_from_canvas(run_generator(checkpoint_generators[direction],
                                                                      pad_to_canvas(source)), size), source)
                saved = read_png(output_dir / "predictions" / direction / n) / 65535
                assert np.abs(saved - expected).max() <= PNG16_ATOL, (direction, n)


def test_identical_data_gives_a_perfect_baseline(trained_run, tmp_path):
    test_a, test_b = write_png_pairs(tmp_path, same_contrast=True)
    output_dir = tmp_path / "out"
    evaluate(f"--logdir={trained_run}", f"--test_a={test_a}", f"--test_b={test_b}", f"--output_dir={output_dir}")
    baseline = load_report(output_dir)["baseline_identity"]
    for direction in DIRECTIONS:
        assert baseline[direction]["ssim"]["mean"] == 1.0
        assert baseline[direction]["psnr"]["mean"] == 100.0  # the documented cap (evaluation/metrics.py)
        assert baseline[direction]["ssim"]["n"] == len(SIZES)


# ------------------------------------------------------------------ --data_dir in each layout


def axial_slice(volume: np.ndarray, index: int) -> np.ndarray:
    """Slice `index` of an RAS volume as data/readers.py documents it: slice[r, c] = volume[X-1-c, Y-1-r, index]."""
    return volume[::-1, ::-1, index].T


def nifti_volume(images: list[np.ndarray], peak: float) -> np.ndarray:
    """An RAS volume whose axial slice 0 is empty and slices 1.. show `images` (downsampled 4x), scaled to `peak`."""
    volume = np.zeros((VOLUME_SIDE, VOLUME_SIDE, len(images) + 1), np.float32)
    for index, image in enumerate(images, start=1):
        small = image[::4, ::4] / image.max() * peak
        volume[:, :, index] = small.T[::-1, ::-1]  # the inverse of axial_slice
    return volume


LAYOUT_PATHS = {  # subject number -> (T1 path, T2 path) inside the data_dir
    "ixi": lambda k: (f"IXI-T1/IXI10{k}-Guys-000{k}-T1.nii.gz", f"IXI-T2/IXI10{k}-Guys-000{k}-T2.nii.gz"),
    "brats": lambda k: (f"BraTS-GLI-0000{k}-000/BraTS-GLI-0000{k}-000-t1n.nii.gz",
                        f"BraTS-GLI-0000{k}-000/BraTS-GLI-0000{k}-000-t2w.nii.gz"),
    "bids": lambda k: (f"sub-0{k}/anat/sub-0{k}_T1w.nii.gz", f"sub-0{k}/anat/sub-0{k}_T2w.nii.gz"),
}


def write_nifti_layout(root, layout: str, write_nifti) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two subjects in `layout`; returns T1 path -> its (T1, T2) volumes."""
    t1, t2 = phantom.paired_test(sum(NONEMPTY_SLICES), 3)
    volumes, first = {}, 0
    for k, count in enumerate(NONEMPTY_SLICES):
        pick = slice(first, first + count)
        first += count
        pair = (nifti_volume(list(t1[pick]), T1_PEAK), nifti_volume(list(t2[pick]), T2_PEAK))
        for relative, volume in zip(LAYOUT_PATHS[layout](k), pair):
            write_nifti(root / relative, volume)
        volumes[str(root / LAYOUT_PATHS[layout](k)[0])] = pair
    return volumes


@pytest.mark.parametrize("layout", ["cyclegan", "ixi", "brats", "bids"])
def test_data_dir_in_each_layout(trained_run, checkpoint_generators, tmp_path, write_nifti, layout):
    """The layout's test split is read (pairs and subjects counted), and baseline and G rows equal a recomputation."""
    root = tmp_path / layout
    if layout == "cyclegan":
        test_a, test_b = write_png_pairs(root)
        write_png_pairs(root, names=("trainA", "trainB"))
        expected_pairs = {direction: png_baseline_comparisons(test_a, test_b, direction) for direction in DIRECTIONS}
        expected_subjects, shapes = len(SIZES), list(SIZES)
    else:
        volumes = write_nifti_layout(root, layout, write_nifti)
        [test_file] = layouts.layout_files(str(root)).test_a  # which subject the default split holds out
        t1_volume, t2_volume = volumes[test_file]
        indices = range(1, t1_volume.shape[2])  # slice 0 is empty: the foreground filter drops it
        t1 = [axial_slice(normalise(t1_volume), i) for i in indices]
        t2 = [axial_slice(normalise(t2_volume), i) for i in indices]
        expected_pairs = {"t1_to_t2": list(zip(t2, t1)), "t2_to_t1": list(zip(t1, t2))}
        expected_subjects, shapes = 1, [(VOLUME_SIDE, VOLUME_SIDE)] * len(indices)
    output_dir = tmp_path / "out"
    evaluate(f"--logdir={trained_run}", f"--data_dir={root}", f"--metrics={ALL_METRICS}", f"--output_dir={output_dir}")

    data = load_report(output_dir)["data"]
    assert data == {"test": f"data_dir={root} (layout detected), its test split",
                    "pairs": len(shapes), "subjects": expected_subjects, "register": "world"}
    rows = csv_rows(output_dir)
    for direction in DIRECTIONS:
        if layout != "cyclegan":
            assert [int(row["slice"]) for row in rows[direction]] == list(indices)
        assert_rows_match(rows[f"baseline_identity/{direction}"], expected_pairs[direction], TOLERANCE, direction)
    # G on each T1 slice (up to 256 px a side: padded to the canvas and cropped back) against T2.
    translated = [(target, without_air(crop_from_canvas(run_generator(checkpoint_generators["t1_to_t2"],
                                                                      pad_to_canvas(source)), shape), source))
                  for (target, source), shape in zip(expected_pairs["t1_to_t2"], shapes) if max(shape) <= CANVAS]
    assert translated
    kept_rows = [row for row, shape in zip(rows["t1_to_t2"], shapes) if max(shape) <= CANVAS]
    assert_rows_match(kept_rows, translated, TOLERANCE, "t1_to_t2")


# ------------------------------------------------------------------ the library, in-process


def test_a_test_source_given_replaces_the_saved_ones(tmp_path):
    flagfile.save(str(tmp_path), {"test_a": "/old/a", "test_b": "/old/b", "min_foreground": 0.2,
                                  "synthetic_seed": 4})
    spec = protocol.data_spec(str(tmp_path), {"data_dir": "/new"})
    assert (spec.test_a, spec.test_b, spec.data_dir) == (None, None, "/new")
    assert (spec.min_foreground, spec.synthetic_seed) == (0.2, 4)  # the other saved data flags still apply
    spec = protocol.data_spec(str(tmp_path), {"min_foreground": 0.5})
    assert (spec.test_a, spec.test_b, spec.min_foreground) == ("/old/a", "/old/b", 0.5)


def test_json_report_turns_nan_into_null():
    summary = {"mae_fg": {"mean": float("nan"), "std": float("nan"), "n": 0}}
    assert report.nested({"baseline_identity/t1_to_t2": summary, "t1_cycle": summary}) == {
        "baseline_identity": {"t1_to_t2": summary}, "t1_cycle": summary}
    assert report.finite_or_none(summary) == {"mae_fg": {"mean": None, "std": None, "n": 0}}


# ------------------------------------------------------------------ bad input: one line, no traceback


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
    assert not (tmp_path / "eval").exists()  # checked before the output folder is made


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


# ------------------------------------------------------------------ real-world test data: other grids, masks, air


def write_ixi_on_two_grids(root, write_nifti) -> None:
    """Two IXI subjects whose T1 is sagittal and T2 axial on other voxel sizes (as in IXI), one analytic head each."""
    from tests.test_resample import analytic_head, grid_points

    t1_affine = np.array([[0, 0, -2.4, 36], [1.9, 0, 0, -46], [0, 1.9, 0, -30], [0, 0, 0, 1]])  # sagittal slices
    t2_affine = np.array([[1.9, 0, 0, -40], [0, 1.9, 0, -46], [0, 0, 3.0, -28], [0, 0, 0, 1]])
    for k in range(2):
        t1, t2 = LAYOUT_PATHS["ixi"](k)
        write_nifti(root / t1, analytic_head(grid_points(t1_affine, (48, 32, 30)), "t1") * (k + 1), t1_affine)
        write_nifti(root / t2, analytic_head(grid_points(t2_affine, (40, 48, 20)), "t2") * (k + 1), t2_affine)


def test_ixi_layout_on_different_grids_gives_paired_metrics(trained_run, tmp_path, write_nifti):
    """The issue's done-when: evaluate.py on an IXI-layout folder whose T1 and T2 are on different grids."""
    root = tmp_path / "ixi"
    write_ixi_on_two_grids(root, write_nifti)
    output_dir = tmp_path / "out"
    result = evaluate(f"--logdir={trained_run}", f"--data_dir={root}", f"--output_dir={output_dir}")
    assert "resampling the reference onto the source's grid" in result.stderr
    report_json = load_report(output_dir)
    pairs = report_json["data"]["pairs"]
    assert set(pairs) == set(DIRECTIONS) and min(pairs.values()) > 0  # each direction on its source's grid
    for direction in DIRECTIONS:
        for head in ("baseline_identity", "baseline_histogram", "baseline_reversed_histogram", "oracle_intensity_map"):
            assert report_json[head][direction]["ssim"]["n"] == pairs[direction]
        assert report_json[direction]["ssim_fg"]["n"] == pairs[direction]
        # Aligned contrasts: the oracle map fitted on each pair explains most of the target.
        assert report_json["oracle_intensity_map"][direction]["ssim"]["mean"] > 0.8
    refused = script("evaluate.py", f"--logdir={trained_run}", f"--data_dir={root}", "--register=none",
                     f"--output_dir={output_dir}")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: no paired test slices")


def fake_generators() -> dict:
    """G and F that paint a constant grey everywhere, air included: visible both with and without the air mask."""
    return {name: (lambda batch: np.zeros_like(batch)) for name in DIRECTIONS}


def test_air_mask_off_gives_the_raw_output_and_mask_rules_are_recorded():
    spec = protocol.datasets.DataSpec(synthetic_test_subjects=2)
    pairs = {d: protocol.datasets.test_pairs(spec) for d in DIRECTIONS}
    data = {"test": "x", "pairs": 2, "subjects": 2}
    masked = protocol.evaluate(fake_generators(), pairs, ["mae"], 8, "ck", 1, data, air_mask=True, mask="none")
    raw = protocol.evaluate(fake_generators(), pairs, ["mae"], 8, "ck", 1, data, air_mask=False, mask="nonzero")
    for (source, _, with_air), (_, _, grey) in zip(masked.compared["t1_to_t2"], raw.compared["t1_to_t2"]):
        np.testing.assert_array_equal(grey, 0.5)
        np.testing.assert_array_equal(with_air, np.where(reference_air(source.original), 0.0, 0.5))
        assert reference_air(source.original).mean() > 0.3
    assert report.json_report(masked)["foreground_mask"]["mask"] == "none"
    assert report.json_report(raw)["air_mask"] is False
    for row in masked.rows["t1_to_t2"]:  # --mask=none: every pixel
        assert row["mae_fg"] == row["mae"]
    for row in raw.rows["t1_to_t2"]:  # --mask=nonzero: the phantoms' noisy air is all "foreground"
        assert row["mae_fg"] == row["mae"]
    head = protocol.evaluate(fake_generators(), pairs, ["mae"], 8, "ck", 1, data, air_mask=False, mask="auto")
    for row, (_, target, _) in zip(head.rows["t1_to_t2"], head.compared["t1_to_t2"]):  # --mask=auto: the head only
        inside = masks.head_mask(target.original)
        assert 0.2 < inside.mean() < 0.8
        assert row["mae_fg"] == pytest.approx(np.mean(np.abs(target.original[inside].astype(np.float64) - 0.5)), rel=1e-12)
