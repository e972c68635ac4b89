"""export.py end to end: one short run exported once, every artifact checked against the checkpoint."""

import json
import os
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from data import phantom, preprocess
from models import inference
from models.networks import GENERATOR_PARAMS
from tests.helpers import checkpoint_step, script
from rundir import flagfile as run_flags
from models.inference import checkpoint_networks

DIRECTION = "t1_to_t2"  # one direction keeps the module fast; both share every line of export.py
CHECKS = ("saved_model", "translate_raw", "tflite_float32", "tflite_float16")
FLOAT32_TOLERANCE = 1e-4  # on [-1, 1] outputs (and on translate_raw's [0, 1] output)
FLOAT16_TOLERANCE = 1e-2  # export.py's bound for float16 weights (about 10x the largest measured), docs/export.md


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """(logdir, output_dir, export.py's result) of the shared one-step run exported in one direction."""
    logdir = trained_run
    output_dir = str(tmp_path_factory.mktemp("exported"))
    result = script("export.py", f"--logdir={logdir}", f"--output_dir={output_dir}", f"--direction={DIRECTION}")
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir, output_dir, result


@pytest.fixture(scope="module")
def checkpoint_generator(exported):
    """The checkpoint's generator of DIRECTION, in inference mode, as [N, 256, 256, 1] -> numpy."""
    generator_g = checkpoint_networks(exported[0])[0]["t1_to_t2"]
    return lambda images: generator_g(tf.constant(images, tf.float32), training=False).numpy()


@pytest.fixture(scope="module")
def saved_model(exported):
    return tf.saved_model.load(os.path.join(exported[1], DIRECTION))


def fixed_images() -> np.ndarray:
    """A real phantom T1 slice and uniform noise, [2, 256, 256, 1] in [-1, 1]."""
    t1, _ = phantom.paired_test(1)
    noise = np.random.default_rng(0).uniform(-1, 1, (256, 256)).astype(np.float32)
    return np.stack([preprocess.to_network(preprocess.normalize(t1[0])), noise])[..., np.newaxis]


def raw_slice(height: int, width: int, peak: float) -> np.ndarray:
    """A phantom T1 slice centred on a height x width grid, at an arbitrary raw intensity scale, with negatives."""
    t1, _ = phantom.paired_test(1)
    unit = preprocess.normalize(t1[0])
    out = np.zeros((height, width), np.float32)
    h, w = min(height, 256), min(width, 256)
    top, left, out_top, out_left = (256 - h) // 2, (256 - w) // 2, (height - h) // 2, (width - w) // 2
    out[out_top : out_top + h, out_left : out_left + w] = unit[top : top + h, left : left + w]
    noise = np.random.default_rng(height).normal(0, 0.01, out.shape).astype(np.float32)
    return (out + noise) * np.float32(peak)  # the noise puts negatives in the air


def project_path(generator, raw: np.ndarray) -> tuple[np.ndarray, float]:
    """The project's own translation of a raw slice: normalize, to_canvas, generator, from_canvas; and the scale."""
    canvas, geometry = preprocess.to_canvas(preprocess.normalize(raw))
    unit = preprocess.from_canvas(inference.translate_canvases(generator, canvas[np.newaxis])[0], geometry)
    return unit, preprocess.intensity_scale(raw)


def test_export_writes_the_artifacts_and_prints_the_checks(exported):
    _, output_dir, result = exported
    assert os.path.isfile(os.path.join(output_dir, DIRECTION, "saved_model.pb"))
    for name in (f"{DIRECTION}.tflite", f"{DIRECTION}_float16.tflite", f"{DIRECTION}.json"):
        assert os.path.getsize(os.path.join(output_dir, name)) > 0, name
    assert not os.path.exists(os.path.join(output_dir, "t2_to_t1")), "--direction was not respected"
    float32_size = os.path.getsize(os.path.join(output_dir, f"{DIRECTION}.tflite"))
    assert float32_size > 4 * GENERATOR_PARAMS, "the weights are missing from the float32 TFLite model"
    assert os.path.getsize(os.path.join(output_dir, f"{DIRECTION}_float16.tflite")) < 0.6 * float32_size
    for check in CHECKS:
        assert f"{DIRECTION} check {check}: max |diff|" in result.stdout, result.stdout


def test_saved_model_in_a_fresh_process_matches_the_checkpoint(exported, checkpoint_generator, tmp_path):
    """Only tensorflow and numpy in the consumer, run outside the repository: no project code needed."""
    images = fixed_images()
    np.save(tmp_path / "images.npy", images)
    code = textwrap.dedent(f"""
        import numpy as np
        import tensorflow as tf
        serve = tf.saved_model.load({os.path.join(exported[1], DIRECTION)!r}).signatures["serving_default"]
        assert list(serve.structured_input_signature[1]) == ["images"], serve.structured_input_signature
        outputs = serve(images=tf.constant(np.load("images.npy")))
        assert list(outputs) == ["translated"], list(outputs)
        np.save("translated.npy", outputs["translated"].numpy())
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    translated = np.load(tmp_path / "translated.npy")
    assert translated.shape == images.shape
    assert np.abs(translated - checkpoint_generator(images)).max() <= FLOAT32_TOLERANCE


def test_models_inference_loads_the_export(exported, checkpoint_generator):
    """translate.py --model goes through models.inference.from_saved_model."""
    images = fixed_images()
    generator = inference.from_saved_model(os.path.join(exported[1], DIRECTION))
    assert np.abs(generator(images) - checkpoint_generator(images)).max() <= FLOAT32_TOLERANCE


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")  # still works in TF 2.21
@pytest.mark.parametrize("name, tolerance", [(f"{DIRECTION}.tflite", FLOAT32_TOLERANCE),
                                             (f"{DIRECTION}_float16.tflite", FLOAT16_TOLERANCE)])
def test_tflite_matches_the_checkpoint(exported, checkpoint_generator, name, tolerance):
    images = fixed_images()
    runner = tf.lite.Interpreter(model_path=os.path.join(exported[1], name)).get_signature_runner("serving_default")
    translated = np.concatenate([runner(images=image[np.newaxis])["translated"] for image in images])
    assert np.abs(translated - checkpoint_generator(images)).max() <= tolerance


@pytest.mark.parametrize("height, width", [(200, 230), (300, 280), (256, 700)])
def test_translate_raw_matches_the_project_path(saved_model, checkpoint_generator, height, width):
    """Smaller than the canvas (padding only), larger (PIL BOX shrink and restore), and a long strip."""
    raw = raw_slice(height, width, peak=3000.0)
    expected_unit, scale = project_path(checkpoint_generator, raw)
    outputs = saved_model.signatures["translate_raw"](image=tf.constant(raw))
    assert outputs["translated_unit"].shape == raw.shape
    assert float(outputs["scale"]) == pytest.approx(scale, rel=1e-6)
    assert np.abs(outputs["translated_unit"].numpy() - expected_unit).max() <= FLOAT32_TOLERANCE
    in_input_scale = expected_unit * np.float32(scale)  # what translate.py writes
    assert np.abs(outputs["translated"].numpy() - in_input_scale).max() <= FLOAT32_TOLERANCE * scale


@pytest.mark.parametrize("shape, positives", [((1, 1), 1), ((3, 5), 2), ((7, 9), 7), ((40, 50), 200),
                                              ((64, 96), 6000), ((120, 130), 15600)])
def test_translate_raw_percentile_is_numpys(saved_model, shape, positives):
    """The in-graph 99.5th percentile of the positive values equals np.percentile's default ('linear')."""
    rng = np.random.default_rng(positives)
    values = np.concatenate([rng.gamma(2.0, 400.0, positives), -rng.random(np.prod(shape) - positives)])
    raw = rng.permutation(values).reshape(shape).astype(np.float32)
    raw[raw > 0] = np.round(raw[raw > 0]) + 1  # integer intensities, as scanners store them: ties
    scale = float(saved_model.signatures["translate_raw"](image=tf.constant(raw))["scale"])
    assert scale == pytest.approx(float(np.percentile(raw[raw > 0], 99.5)), rel=1e-6)


def test_translate_raw_of_an_empty_slice_is_zero(saved_model):
    """No positive voxel: divisor 0, no NaN, zeros out (as normalize gives zeros)."""
    outputs = saved_model.signatures["translate_raw"](image=tf.fill([40, 30], -5.0))
    assert float(outputs["scale"]) == 0.0
    assert np.all(outputs["translated"].numpy() == 0.0)


def test_json_card(exported):
    logdir, output_dir, _ = exported
    with open(os.path.join(output_dir, f"{DIRECTION}.json")) as f:
        card = json.load(f)
    assert card["direction"] == DIRECTION
    assert (card["source_contrast"], card["target_contrast"]) == ("T1w", "T2w")  # as translate.py names them
    assert card["parameters"] == GENERATOR_PARAMS == 54_408_833
    assert card["checkpoint"]["step"] == checkpoint_step(logdir) == 1
    assert os.path.basename(card["checkpoint"]["path"]) == "ckpt-1"
    assert card["training_flags"] == run_flags.load(logdir)
    assert card["tensorflow_version"] == tf.__version__
    preprocessing = card["preprocessing"]
    assert (preprocessing["percentile"], preprocessing["canvas"]) == (99.5, 256)
    assert preprocessing["network_range"] == [-1, 1]
    assert {"rule", "resize", "translate_raw"} <= preprocessing.keys()
    assert card["artifacts"] == {"saved_model": DIRECTION, "tflite_float32": f"{DIRECTION}.tflite",
                                 "tflite_float16": f"{DIRECTION}_float16.tflite"}
    assert card["checks"]["slices"] == 2  # QUICK has two synthetic test subjects
    for check in CHECKS:
        result = card["checks"][check]
        assert result["passed"] and 0 <= result["max_abs_diff"] <= result["tolerance"], (check, result)
    assert card["checks"]["tflite_float16"]["tolerance"] == FLOAT16_TOLERANCE


def truncated_copy(logdir: str, target) -> None:
    """The run's newest checkpoint with its data file cut to 1 MB, as a crash or a full disk can leave it."""
    source = os.path.join(logdir, "checkpoints")
    (target / "checkpoints").mkdir(parents=True)
    for name in os.listdir(source):
        with open(os.path.join(source, name), "rb") as f:
            content = f.read(2**20) if ".data-" in name else f.read()
        (target / "checkpoints" / name).write_bytes(content)


@pytest.mark.parametrize("state, message", [("empty", "error: no checkpoint in"),
                                            ("truncated", "unreadable checkpoint")])
def test_missing_or_broken_checkpoint_is_a_one_line_error(exported, tmp_path, state, message):
    logdir = tmp_path / "run"
    if state == "truncated":
        truncated_copy(exported[0], logdir)
    output_dir = tmp_path / "exported"
    result = script("export.py", f"--logdir={logdir}", f"--output_dir={output_dir}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and message in last_line, last_line
    assert not output_dir.exists()


def test_output_dir_that_is_a_file_is_a_one_line_error(tmp_path):
    """Checked before the checkpoint is even looked for: no run is needed, nothing is written."""
    blocker = tmp_path / "exported"
    blocker.write_text("not a folder")
    result = script("export.py", f"--logdir={tmp_path / 'run'}", f"--output_dir={blocker}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == f"error: --output_dir={blocker} is a file, not a folder", last_line
    assert blocker.read_text() == "not a folder" and sorted(os.listdir(tmp_path)) == ["exported"]


def test_translate_py_refuses_a_model_of_the_other_direction(exported, tmp_path, write_nifti):
    """The card beside the SavedModel (<output_dir>/t1_to_t2.json) names its direction; --direction must match."""
    t1, _ = phantom.paired_test(1)
    volume = write_nifti(tmp_path / "t2.nii.gz", t1[0][..., np.newaxis])
    model = os.path.join(exported[1], DIRECTION) + os.sep  # a trailing slash, as shell completion adds
    result = script("translate.py", "--direction=t2_to_t1", f"--input={volume}", f"--output={tmp_path / 'out'}",
                    f"--model={model}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "translates t1_to_t2" in last_line, last_line
    assert "not --direction=t2_to_t1" in last_line and f"{DIRECTION}.json" in last_line
    assert not (tmp_path / "out").exists()


def test_translate_py_from_the_saved_model_matches_the_checkpoint(exported, tmp_path, write_nifti):
    """translate.py --model=<export>/t1_to_t2 gives what translate.py --logdir gives, without training code."""
    logdir, output_dir, _ = exported
    t1, _ = phantom.paired_test(3, seed=2)
    volume = write_nifti(tmp_path / "t1.nii.gz", np.transpose(t1, (2, 1, 0))[::-1, ::-1] * 7.0)
    outputs = {}
    for source in (f"--model={os.path.join(output_dir, DIRECTION)}", f"--logdir={logdir}"):
        target = tmp_path / (source.split("=")[0].strip("-") + ".nii.gz")
        result = script("translate.py", f"--direction={DIRECTION}", f"--input={volume}", f"--output={target}", source)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "no model card" not in result.stderr  # the card is there and names DIRECTION
        outputs[source] = nib.load(target)
    from_model, from_checkpoint = outputs.values()
    assert from_model.shape == from_checkpoint.shape == nib.load(volume).shape
    np.testing.assert_array_equal(from_model.affine, nib.load(volume).affine)
    scale = preprocess.intensity_scale(t1 * 7.0)
    np.testing.assert_allclose(from_model.get_fdata(), from_checkpoint.get_fdata(), atol=1e-4 * scale)
    assert np.abs(from_model.get_fdata()).max() > 0
