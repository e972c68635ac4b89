"""export.py end to end, both directions, every artifact checked against an independent forward pass.

One export of the shared one-step run (its checkpoint, with saved flags pointing at a --data_dir) serves
most tests. The reference networks are built from the raw checkpoint values (tf.train.load_checkpoint),
not with models/inference.py's restore, which export.py itself uses. Staging (nothing is left when a
check fails) is tested in-process on a tiny network.
"""

import json
import os
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from data import datasets, phantom, preprocess
from models import exporting, inference, serving
from models.directions import DIRECTIONS
from models.networks import build_generator
from rundir import flagfile as run_flags
from rundir.checkpoints import CHECKPOINT_DIR, latest_checkpoint
from tests.helpers import NARROW_FILTERS, checkpoint_step, script
from tests.test_masks import reference_air

CHECKS = ("saved_model", "translate_raw", "tflite_float32", "tflite_float16")
# Against the independent forward pass, on [-1, 1] outputs (translate_raw: [0, 1]). Measured on the shared one-step
# run (narrow: --filters=4): SavedModel 1.8e-7, TFLite float32 6.0e-7 (float32 sums in another order, by oneDNN and
# XNNPACK); the bound is about 8x that (the full-size networks, whose sums run over up to 8192 terms, measured
# 2.0e-6 and 3.4e-6). float16 weights carry a relative rounding of up to 2^-11: measured 4.4e-4 (mean 3.8e-5),
# bound about 4.5x (full size: 1.2e-3). A swapped generator differs by 0.43 (G's input) and 0.52 (F's).
FLOAT32_TOLERANCE = 5e-6
FLOAT16_TOLERANCE = 2e-3
CHECK_SLICES_IN_DATA_DIR = 3  # one test subject of three slices: fewer than exporting.CHECK_SLICES
# The shared run is narrow (tests/conftest.py trained_run: --filters=4): a generator of this many parameters.
NARROW_GENERATOR_PARAMS = 213_353


def write_cyclegan_data_dir(root) -> str:
    """A cyclegan-layout folder with one paired phantom test subject (3 slices) and one training volume per domain."""
    t1, t2 = phantom.paired_test(CHECK_SLICES_IN_DATA_DIR, seed=5)
    for folder, volume in (("trainA", t1), ("trainB", t2), ("testA", t1), ("testB", t2)):
        (root / folder).mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.transpose(volume, (1, 2, 0)) * np.float32(800), np.eye(4)),
                 str(root / folder / "case1.nii.gz"))
    return str(root)


@pytest.fixture(scope="module")
def run_with_data_dir(trained_run, tmp_path_factory):
    """(logdir, data_dir): the shared run's checkpoint, its saved flags plus --data_dir/--layout of a cyclegan folder."""
    root = tmp_path_factory.mktemp("run_with_data_dir")
    data_dir = write_cyclegan_data_dir(root / "data")
    logdir = root / "run"
    logdir.mkdir()
    os.symlink(os.path.join(trained_run, CHECKPOINT_DIR), logdir / CHECKPOINT_DIR)
    run_flags.save(str(logdir), {**run_flags.load(trained_run), "data_dir": data_dir, "layout": "cyclegan"})
    return str(logdir), data_dir


@pytest.fixture(scope="module")
def exported(run_with_data_dir, tmp_path_factory):
    """(logdir, output_dir, export.py's result): the run exported once with the default --direction=both."""
    logdir, _ = run_with_data_dir
    output_dir = str(tmp_path_factory.mktemp("exported"))
    result = script("export.py", f"--logdir={logdir}", f"--output_dir={output_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir, output_dir, result


def network_from_raw_checkpoint(checkpoint: str, name: str) -> tf.keras.Model:
    """build_generator with the weights read from the checkpoint file as the optimizer stored them.

    Keras 3 models in a checkpoint that also holds their optimizer are stored under
    optimizer_<network>/_trainable_variables/<i> (tests/helpers.checkpoint_weight_count).
    """
    reader = tf.train.load_checkpoint(checkpoint)
    network = build_generator(name, NARROW_FILTERS)
    values = [reader.get_tensor(f"optimizer_{name}/_trainable_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
              for i in range(len(network.trainable_weights))]
    assert len(network.weights) == len(values), "the generator has weights the optimizer does not hold"
    network.set_weights(values)  # raises on a shape mismatch
    return network


@pytest.fixture(scope="module")
def references(exported):
    """{direction: [N, 256, 256, 1] -> numpy} by the networks rebuilt from the raw checkpoint: G and F."""
    checkpoint = latest_checkpoint(exported[0])
    networks = {d: network_from_raw_checkpoint(checkpoint, DIRECTIONS[d].generator) for d in DIRECTIONS}
    return {d: (lambda images, n=n: n(tf.constant(images, tf.float32), training=False).numpy())
            for d, n in networks.items()}


def fixed_images(direction: str) -> np.ndarray:
    """A phantom slice of the direction's source contrast and uniform noise, [2, 256, 256, 1] in [-1, 1]."""
    source = phantom.paired_test(1)[DIRECTIONS[direction].source_index][0]
    noise = np.random.default_rng(0).uniform(-1, 1, (256, 256)).astype(np.float32)
    return np.stack([preprocess.to_network(preprocess.normalize(source)), noise])[..., np.newaxis]


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


def project_path(generator, raw: np.ndarray, air_mask: bool = True) -> tuple[np.ndarray, float]:
    """The project's own translation of a raw slice: normalize, to_canvas, generator, from_canvas, 0 in the air
    (tests/test_masks.reference_air) unless `air_mask` is false; and the scale."""
    normalised = preprocess.normalize(raw)
    canvas, geometry = preprocess.to_canvas(normalised)
    unit = preprocess.from_canvas(inference.translate_canvases(generator, canvas[np.newaxis])[0], geometry)
    if air_mask:
        unit = np.where(reference_air(normalised), np.float32(0), unit)
    return unit, preprocess.intensity_scale(raw)


def artifact_outputs(output_dir: str, direction: str, artifact: str, images: np.ndarray) -> np.ndarray:
    """An artifact's serving signature on `images`; TFLite one slice per call, as export.py's check runs it."""
    if artifact == "saved_model":
        serve = tf.saved_model.load(os.path.join(output_dir, direction)).signatures["serving_default"]
        return serve(images=tf.constant(images))["translated"].numpy()
    suffix = {"tflite_float32": "", "tflite_float16": "_float16"}[artifact]
    runner = tf.lite.Interpreter(model_path=os.path.join(output_dir, f"{direction}{suffix}.tflite")) \
        .get_signature_runner("serving_default")
    return np.concatenate([runner(images=image[np.newaxis])["translated"] for image in images])


def read_card(output_dir: str, direction: str) -> dict:
    with open(os.path.join(output_dir, f"{direction}.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------- what export.py writes and prints


def test_export_writes_both_directions_and_nothing_else(exported):
    _, output_dir, result = exported
    expected = set()
    for direction in DIRECTIONS:
        expected |= {direction, f"{direction}.tflite", f"{direction}_float16.tflite", f"{direction}.json"}
        assert os.path.isfile(os.path.join(output_dir, direction, "saved_model.pb"))
        float32_size = os.path.getsize(os.path.join(output_dir, f"{direction}.tflite"))
        assert float32_size > 4 * NARROW_GENERATOR_PARAMS, "the weights are missing from the float32 TFLite model"
        assert os.path.getsize(os.path.join(output_dir, f"{direction}_float16.tflite")) < 0.6 * float32_size
        for check in CHECKS:
            (line,) = [line for line in result.stdout.splitlines() if line.startswith(f"{direction} check {check}:")]
            assert line.endswith(" ok"), line
    assert set(os.listdir(output_dir)) == expected  # the staging folder is gone
    assert result.stdout.strip().splitlines()[-1].startswith("exported step 1 of ")


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")  # still works in TF 2.21
@pytest.mark.parametrize("artifact, tolerance", [("saved_model", FLOAT32_TOLERANCE),
                                                 ("tflite_float32", FLOAT32_TOLERANCE),
                                                 ("tflite_float16", FLOAT16_TOLERANCE)])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_every_artifact_matches_its_generator(exported, references, direction, artifact, tolerance):
    """t1_to_t2 artifacts give generator G's output, t2_to_t1 artifacts F's: a swap differs by far more."""
    images = fixed_images(direction)
    expected = references[direction](images)
    swapped = references[DIRECTIONS[direction].reverse](images)
    assert np.abs(swapped - expected).max() > 100 * FLOAT16_TOLERANCE  # the check can tell G from F
    translated = artifact_outputs(exported[1], direction, artifact, images)
    assert translated.shape == images.shape
    assert np.abs(translated - expected).max() <= tolerance


@pytest.mark.parametrize("height, width", [(200, 230), (300, 280), (256, 700)])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_translate_raw_matches_the_project_path(exported, references, direction, height, width):
    """Smaller than the canvas (padding only), larger (PIL BOX shrink and restore), and a long strip."""
    saved_model = tf.saved_model.load(os.path.join(exported[1], direction))
    raw = raw_slice(height, width, peak=3000.0)
    expected_unit, scale = project_path(references[direction], raw)
    outputs = saved_model.signatures["translate_raw"](image=tf.constant(raw))
    assert outputs["translated_unit"].shape == raw.shape
    assert float(outputs["scale"]) == np.float32(scale)  # the in-graph percentile is NumPy's, bit for bit
    assert np.abs(outputs["translated_unit"].numpy() - expected_unit).max() <= FLOAT32_TOLERANCE
    in_input_scale = expected_unit * np.float32(scale)  # what translate.py writes
    assert np.abs(outputs["translated"].numpy() - in_input_scale).max() <= FLOAT32_TOLERANCE * scale


def test_saved_model_in_a_fresh_process_matches_generator_g(exported, references, tmp_path):
    """Only tensorflow and numpy in the consumer, run outside the repository: no project code needed."""
    images = fixed_images("t1_to_t2")
    np.save(tmp_path / "images.npy", images)
    code = textwrap.dedent(f"""
        import numpy as np
        import tensorflow as tf
        serve = tf.saved_model.load({os.path.join(exported[1], "t1_to_t2")!r}).signatures["serving_default"]
        assert list(serve.structured_input_signature[1]) == ["images"], serve.structured_input_signature
        outputs = serve(images=tf.constant(np.load("images.npy")))
        assert list(outputs) == ["translated"], list(outputs)
        np.save("translated.npy", outputs["translated"].numpy())
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    translated = np.load(tmp_path / "translated.npy")
    assert translated.shape == images.shape
    assert np.abs(translated - references["t1_to_t2"](images)).max() <= FLOAT32_TOLERANCE


def test_models_inference_loads_the_export(exported, references):
    """translate.py --model goes through models.inference.from_saved_model."""
    images = fixed_images("t2_to_t1")
    generator = inference.from_saved_model(os.path.join(exported[1], "t2_to_t1"))
    assert np.abs(generator(images) - references["t2_to_t1"](images)).max() <= FLOAT32_TOLERANCE


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_json_card(exported, run_with_data_dir, direction):
    logdir, output_dir, _ = exported
    card = read_card(output_dir, direction)
    assert card["direction"] == direction
    assert (card["source_contrast"], card["target_contrast"]) == (DIRECTIONS[direction].source,
                                                                  DIRECTIONS[direction].result)
    assert card["generator"] == DIRECTIONS[direction].generator
    assert card["parameters"] == NARROW_GENERATOR_PARAMS  # the run's saved width, not the design's
    assert card["checkpoint"]["step"] == checkpoint_step(logdir) == 1
    assert os.path.basename(card["checkpoint"]["path"]) == "ckpt-1"
    assert card["training_flags"] == run_flags.load(logdir)
    assert card["tensorflow_version"] == tf.__version__
    preprocessing = card["preprocessing"]
    assert (preprocessing["percentile"], preprocessing["canvas"]) == (99.5, 256)
    assert preprocessing["network_range"] == [-1, 1]
    assert {"rule", "resize", "translate_raw"} <= preprocessing.keys()
    assert card["air_mask"]["translate_raw"] is True and card["air_mask"]["serving_default"] is False
    assert "border" in card["air_mask"]["rule"]
    assert card["artifacts"] == {"saved_model": direction, "tflite_float32": f"{direction}.tflite",
                                 "tflite_float16": f"{direction}_float16.tflite"}
    for check in CHECKS:
        result = card["checks"][check]
        assert result["tolerance"] == exporting.TOLERANCES[check]
        assert result["passed"] and 0 <= result["max_abs_diff"] <= result["tolerance"], (check, result)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_checks_read_the_source_side_of_the_runs_data_dir(exported, run_with_data_dir, direction):
    """The run's saved --data_dir (cyclegan layout) gives the check slices: testA for G, testB for F."""
    _, data_dir = run_with_data_dir
    checks = read_card(exported[1], direction)["checks"]
    assert (checks["from"], checks["slices"]) == ("the run's paired test split", CHECK_SLICES_IN_DATA_DIR)
    source = os.path.join(data_dir, "testA" if DIRECTIONS[direction].source == "T1w" else "testB", "case1.nii.gz")
    assert checks["slice_sources"] == [f"{source} slice {i}" for i in range(CHECK_SLICES_IN_DATA_DIR)]
    assert "checks: cannot use" not in exported[2].stderr


# ---------------------------------------------------------------- staging: a failed export leaves nothing


def tiny_generator() -> tf.keras.Model:
    """A 10-parameter stand-in with the generator's input and output: exports in seconds."""
    inputs = tf.keras.Input((256, 256, 1))
    outputs = tf.keras.layers.Conv2D(1, 3, padding="same", activation="tanh")(inputs)
    return tf.keras.Model(inputs, outputs)


def export_tiny(output_dir) -> list[exporting.DirectionExport]:
    return exporting.export({"t2_to_t1": tiny_generator()}, ("t2_to_t1",), str(output_dir), with_tflite=True,
                            step=7, checkpoint="ckpt-7", training_flags={"synthetic_test_subjects": "2"})


def folder_contents(folder) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, files in os.walk(folder) for name in files}


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_a_failed_check_leaves_the_output_folder_as_it_was(tmp_path, monkeypatch):
    """A first export lands; a second whose float16 check fails changes nothing and leaves no staging folder."""
    (result,) = export_tiny(tmp_path)
    assert result.failed == []
    assert sorted(os.listdir(tmp_path)) == ["t2_to_t1", "t2_to_t1.json", "t2_to_t1.tflite", "t2_to_t1_float16.tflite"]
    assert read_card(tmp_path, "t2_to_t1")["checkpoint"] == {"path": "ckpt-7", "step": 7}
    before = folder_contents(tmp_path)
    monkeypatch.setitem(exporting.TOLERANCES, "tflite_float16", -1.0)  # no difference passes
    (result,) = export_tiny(tmp_path)
    assert result.failed == ["tflite_float16"]
    assert folder_contents(tmp_path) == before


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_a_failed_check_in_an_empty_folder_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(exporting.TOLERANCES, "saved_model", -1.0)
    (result,) = export_tiny(tmp_path)
    assert result.failed == ["saved_model"]
    assert os.listdir(tmp_path) == []


def test_an_error_while_writing_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(serving, "convert_tflite", fail)
    with pytest.raises(RuntimeError, match="converter crashed"):
        export_tiny(tmp_path)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- the in-graph preprocessing


@pytest.mark.parametrize("shape, positives", [((1, 1), 1), ((3, 5), 2), ((7, 9), 7), ((40, 50), 200),
                                              ((64, 96), 6000), ((120, 130), 15600)])
def test_in_graph_percentile_is_numpys_bit_for_bit(shape, positives):
    """The in-graph 99.5th percentile of the positive values equals np.percentile's default ('linear')."""
    rng = np.random.default_rng(positives)
    values = np.concatenate([rng.gamma(2.0, 400.0, positives), -rng.random(np.prod(shape) - positives)])
    raw = rng.permutation(values).reshape(shape).astype(np.float32)
    raw[raw > 0] = np.round(raw[raw > 0]) + 1 + np.float32(1 / 3)  # ties, and values with all 24 bits in use
    scale = serving.intensity_scale(tf.constant(raw)).numpy()
    assert scale == np.float32(np.percentile(raw[raw > 0], 99.5))


def test_translate_raw_of_an_empty_slice_is_zero(exported):
    """No positive voxel: divisor 0, no NaN, zeros out (as normalize gives zeros)."""
    saved_model = tf.saved_model.load(os.path.join(exported[1], "t1_to_t2"))
    outputs = saved_model.signatures["translate_raw"](image=tf.fill([40, 30], -5.0))
    assert float(outputs["scale"]) == 0.0
    assert np.all(outputs["translated"].numpy() == 0.0)


# ---------------------------------------------------------------- bad input


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
def test_missing_or_broken_checkpoint_is_a_one_line_error(trained_run, tmp_path, state, message):
    logdir = tmp_path / "run"
    if state == "truncated":
        truncated_copy(trained_run, logdir)
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


# ---------------------------------------------------------------- translate.py with the exports


def test_translate_py_refuses_a_model_of_the_other_direction(exported, tmp_path, write_nifti):
    """The card beside the SavedModel (<output_dir>/t1_to_t2.json) names its direction; --direction must match."""
    t1, _ = phantom.paired_test(1)
    volume = write_nifti(tmp_path / "t2.nii.gz", t1[0][..., np.newaxis])
    model = os.path.join(exported[1], "t1_to_t2") + os.sep  # a trailing slash, as shell completion adds
    result = script("translate.py", "--direction=t2_to_t1", f"--input={volume}", f"--output={tmp_path / 'out'}",
                    f"--model={model}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "translates t1_to_t2" in last_line, last_line
    assert "not --direction=t2_to_t1" in last_line and "t1_to_t2.json" in last_line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_translate_py_from_the_saved_model_matches_the_checkpoint(exported, direction, tmp_path, write_nifti):
    """translate.py --model=<export>/<direction> gives what --logdir gives: the trained run's G, resp. F."""
    logdir, output_dir, _ = exported
    source = phantom.paired_test(3, seed=2)[DIRECTIONS[direction].source_index]
    volume = write_nifti(tmp_path / "source.nii.gz", np.transpose(source, (2, 1, 0))[::-1, ::-1] * 7.0)
    outputs = {}
    for option in (f"--model={os.path.join(output_dir, direction)}", f"--logdir={logdir}"):
        target = tmp_path / (option.split("=")[0].strip("-") + ".nii.gz")
        result = script("translate.py", f"--direction={direction}", f"--input={volume}", f"--output={target}", option)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "no model card" not in result.stderr  # the card is there and names the direction
        outputs[option] = nib.load(target)
    from_model, from_checkpoint = outputs.values()
    assert from_model.shape == from_checkpoint.shape == nib.load(volume).shape
    np.testing.assert_array_equal(from_model.affine, nib.load(volume).affine)
    scale = preprocess.intensity_scale(source * 7.0)
    assert np.abs(from_model.get_fdata() - from_checkpoint.get_fdata()).max() <= FLOAT32_TOLERANCE * scale
    assert from_model.get_fdata().max() > 0.1 * scale  # not a volume of zeros


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_air_mask_false_exports_the_raw_output_and_the_card_says_so(tmp_path):
    """translate_raw zeroes the air by default; exported with air_mask=False it is the network's output there."""
    generator = tiny_generator()
    raw = raw_slice(200, 230, peak=3000.0)
    air = reference_air(preprocess.normalize(raw))
    assert air.mean() > 0.3
    for air_mask in (True, False):
        folder = tmp_path / str(air_mask)
        folder.mkdir()
        (result,) = exporting.export({"t2_to_t1": generator}, ("t2_to_t1",), str(folder), with_tflite=False, step=7,
                                     checkpoint="ckpt-7", training_flags={"synthetic_test_subjects": "2"},
                                     air_mask=air_mask)
        assert result.failed == []  # export.py's own check used the same rule
        assert read_card(folder, "t2_to_t1")["air_mask"]["translate_raw"] is air_mask
        outputs = tf.saved_model.load(str(folder / "t2_to_t1")).signatures["translate_raw"](image=tf.constant(raw))
        expected, _ = project_path(lambda batch: generator(batch).numpy(), raw, air_mask)
        assert np.abs(outputs["translated_unit"].numpy() - expected).max() <= FLOAT32_TOLERANCE
        assert (outputs["translated_unit"].numpy()[air] == 0).all() == air_mask


@pytest.mark.parametrize("layout", ["ixi", "brats", "bids"])
def test_checks_read_the_source_side_of_each_nifti_layout(tmp_path, write_nifti, layout):
    """export.py's checks take the run's data flags: with a --data_dir in each layout, the slices of the held-out
    subject's source contrast, as the run read them (the cyclegan layout runs end to end above)."""
    from data import layouts
    from models.exporting import check_slices
    from tests.test_loop import on_canvas, write_layout

    root = tmp_path / layout
    expected = write_layout(root, layout, write_nifti)
    files = layouts.layout_files(str(root))
    for direction, test_files in (("t1_to_t2", files.test_a), ("t2_to_t1", files.test_b)):
        slices, origin = check_slices(datasets.DataSpec(data_dir=str(root)), direction, 3)
        assert origin == "the run's paired test split"
        [source] = test_files
        want = expected[source]
        assert [item.source for item in slices] == [source] * len(slices) and len(slices) == min(3, len(want))
        picks = sorted(set(np.linspace(0, len(want) - 1, len(slices)).round().astype(int)))
        for item, index in zip(slices, picks):
            np.testing.assert_allclose(item.image, on_canvas(want[index]), atol=1e-6)
