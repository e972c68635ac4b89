"""translate.py end to end: every input format back in its own format and grid, bad input as one-line errors.

The tests translate with a stand-in run: a checkpoint of two real generator networks (the U-Net of
models/networks.py) whose weights make each compute a known function that differs between G and F
(`standin_unit`). Values written can so be checked exactly, and a swapped direction, slice order or
orientation shows. A one-step trained checkpoint is exercised by tests/test_export.py.
"""

import copy
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
import tensorflow as tf
from PIL import Image
from pydicom.uid import generate_uid

from data import preprocess
from data.readers import read_path
from models import serving
from models.directions import DIRECTIONS
from models.networks import build_generator
from rundir import flagfile
from rundir.checkpoints import checkpoint_dir
from tests.helpers import NARROW_FILTERS, PERMUTED_LPS, ROOT, script, write_png
from tests.test_dicom_output import FLOAT32_EPS, GRID_TOLERANCE_MM, dcm2niix, dciodvfy_errors
from tests.test_masks import reference_air

BRATS_T1 = "brats/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1n.nii.gz"
# The stand-in generator of a direction computes tanh(gain x mean of each 2x2 block of the [-1, 1] canvas),
# the block filled with it: G brightens (gain 2), F inverts (gain -1). Equal for any in-plane flip or
# transpose of a slice whose sides are multiples of 4 (its blocks then stay blocks on the canvas).
STANDIN_GAINS = {"t1_to_t2": 2.0, "t2_to_t1": -1.0}
# The U-Net's float32 sums (the 2x2 mean, the zero paths) against NumPy's: measured 1.2e-7 on the [-1, 1]
# output; a tanh slope of at most |gain| = 2 and rounding of the [0, 1] values keep it below 1e-6 of the scale.
UNIT_TOLERANCE = 1e-6


def standin_generator(name: str, gain: float) -> tf.keras.Model:
    """The U-Net (at the narrow width: what it computes does not depend on it) with every weight 0 but two: down1
    takes the mean of each 2x2 block, +x and -x in two channels; the output layer recombines them as
    LeakyReLU(a) - LeakyReLU(-a) = 1.2 a and fills the block with it."""
    network = build_generator(name, NARROW_FILTERS)
    for weight in network.weights:
        weight.assign(tf.zeros_like(weight))
    down = network.get_layer("down1").layers[0]
    kernel = np.zeros(down.kernel.shape, np.float32)
    kernel[1:3, 1:3, 0, 0], kernel[1:3, 1:3, 0, 1] = 0.25, -0.25  # 'same' padding: taps 1, 2 cover rows 2i, 2i+1
    down.kernel.assign(kernel)
    output = network.get_layer("output")
    kernel = np.zeros(output.kernel.shape, np.float32)  # [4, 4, out 1, in 2 f]: up7's f channels, then down1's
    kernel[1:3, 1:3, 0, NARROW_FILTERS], kernel[1:3, 1:3, 0, NARROW_FILTERS + 1] = gain / 1.2, -gain / 1.2
    output.kernel.assign(kernel)
    return network


def standin_unit(direction: str, canvases: np.ndarray) -> np.ndarray:
    """What the stand-in generator of `direction` makes of [N, 256, 256] canvases in [0, 1], in [0, 1]."""
    signed = preprocess.to_network(canvases)
    blocks = signed.reshape(len(signed), 128, 2, 128, 2).mean(axis=(2, 4))
    translated = np.tanh(STANDIN_GAINS[direction] * blocks).repeat(2, axis=1).repeat(2, axis=2)
    return preprocess.from_network(translated)


def expected_translation(direction: str, slices: np.ndarray, min_foreground: float = 0.05,
                         air_mask: bool = True) -> np.ndarray:
    """translate.py's result for [S, H, W] raw slices with the stand-in, in the input's scale (images: [0, 1]);
    with `air_mask` (the default) 0 where the slice is air (tests/test_masks.reference_air)."""
    scale = preprocess.intensity_scale(slices)
    out = np.zeros(slices.shape, np.float64)
    for index, raw in enumerate(slices):
        unit = preprocess.normalize(raw, scale)
        if preprocess.foreground_fraction(unit) < min_foreground:
            continue
        canvas, geometry = preprocess.to_canvas(unit)
        out[index] = preprocess.from_canvas(standin_unit(direction, canvas[np.newaxis])[0], geometry)
        if air_mask:
            out[index][reference_air(unit)] = 0.0
    return out * scale


# Session-scoped, not module-scoped: made in seconds (at most once per pytest-xdist worker), so that this module's
# translate.py processes are spread over the workers instead of being grouped on one (tests/conftest.py).
@pytest.fixture(scope="session")
def standin_run(tmp_path_factory) -> str:
    """A logdir whose newest checkpoint holds the stand-in G (generator_g) and F (generator_f), and whose flags say
    their width."""
    logdir = str(tmp_path_factory.mktemp("standin_run"))
    flagfile.save(logdir, {"filters": NARROW_FILTERS})
    networks = {DIRECTIONS[d].generator: standin_generator(DIRECTIONS[d].generator, gain)
                for d, gain in STANDIN_GAINS.items()}
    checkpoint = tf.train.Checkpoint(step=tf.Variable(1, dtype=tf.int64), **networks)
    tf.train.CheckpointManager(checkpoint, checkpoint_dir(logdir), max_to_keep=1).save()
    return logdir


@pytest.fixture(scope="session")
def standin_model(tmp_path_factory) -> str:
    """The stand-in G exported as export.py exports (models/serving.py), without a card."""
    path = str(tmp_path_factory.mktemp("standin_model") / "t1_to_t2")
    serving.save_saved_model(standin_generator("generator_g", STANDIN_GAINS["t1_to_t2"]), path)
    return path


def translate(*args: str, direction: str = "t1_to_t2"):
    return script("translate.py", f"--direction={direction}", *args)


def assert_ok(result):
    assert result.returncode == 0, result.stderr[-3000:]


def assert_one_line_error(result, *words: str):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for word in words:
        assert word in last, last


def head_phantom(shape) -> np.ndarray:
    """An ellipse of 'tissue' with ramps along both axes inside, zero air around it; values up to ~1300.

    The ellipse covers about half of each slice, far above --min_foreground (0.05), which is measured on the
    slice itself (data/datasets.volume_slices), so every slice of it is translated. The ramps make every
    flip and transpose of it a different image.
    """
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    inside = x**2 / 0.8 + y**2 / 0.6 < 1
    return inside * (400 + 600 * (x + 1) / 2 + 300 * (y + 1) / 2)


def test_standin_generator_computes_its_formula():
    """The formula the other tests expect, against the network's own forward pass."""
    canvases = np.random.default_rng(0).uniform(0, 1, (2, 256, 256)).astype(np.float32)
    for direction, gain in STANDIN_GAINS.items():
        network = standin_generator("g", gain)
        signed = network(preprocess.to_network(canvases)[..., np.newaxis], training=False).numpy()[..., 0]
        assert np.abs(preprocess.from_network(signed) - standin_unit(direction, canvases)).max() <= UNIT_TOLERANCE
    assert np.abs(standin_unit("t1_to_t2", canvases) - standin_unit("t2_to_t1", canvases)).max() > 0.5


# ---------------------------------------------------------------- NIfTI and the direction


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_nifti_direction_uses_its_generator(standin_run, tmp_path, write_nifti, direction):
    """--direction=t1_to_t2 runs G and t2_to_t1 runs F; same shape, affine, voxel order; the air slice stays 0."""
    volume = np.stack([head_phantom((160, 192)) * (1 + k / 10) for k in range(5)] + [np.zeros((160, 192))], axis=-1)
    source = write_nifti(tmp_path / "in" / "sub-01_T1w.nii.gz", volume.astype(np.float32), PERMUTED_LPS)
    result = translate(f"--input={source}", f"--output={tmp_path / 'out'}", f"--logdir={standin_run}",
                       direction=direction)
    assert_ok(result)
    assert "1 of 6 slices below --min_foreground written as 0" in result.stderr
    out = nib.load(tmp_path / "out" / "sub-01_T1w.nii.gz")
    assert out.shape == volume.shape and out.get_data_dtype() == np.float32
    np.testing.assert_array_equal(out.affine, nib.load(source).affine)
    assert f"synthetic {DIRECTIONS[direction].result} from {DIRECTIONS[direction].source}".encode() \
        in out.header["descrip"].tobytes()
    expected = np.moveaxis(expected_translation(direction, np.moveaxis(volume, -1, 0)), 0, -1)
    scale = preprocess.intensity_scale(volume)
    swapped = np.moveaxis(expected_translation(DIRECTIONS[direction].reverse, np.moveaxis(volume, -1, 0)), 0, -1)
    assert np.abs(swapped - expected).max() > 0.1 * scale  # the check tells G from F
    assert np.abs(out.get_fdata() - expected).max() <= UNIT_TOLERANCE * scale
    assert np.all(out.get_fdata()[..., 5] == 0)


def test_nifti_from_an_exported_model_imports_no_training_code(standin_model, tmp_path, write_nifti):
    """--model runs the SavedModel (export.py's format): the values of G, and no training code imported."""
    volume = np.stack([head_phantom((148, 200)) * (1 + k / 10) for k in range(3)], axis=-1)
    source = write_nifti(tmp_path / "t1.nii", volume.astype(np.float32), PERMUTED_LPS)
    list_imports_at_exit = ("import atexit, runpy, sys; atexit.register(lambda: print('imported:', *sys.modules)); "
                            "sys.argv[0] = 'translate.py'; runpy.run_path('translate.py', run_name='__main__')")
    result = subprocess.run(
        [sys.executable, "-c", list_imports_at_exit, "--direction=t1_to_t2", f"--input={source}",
         f"--output={tmp_path / 'x' / 'synthetic.nii.gz'}", f"--model={standin_model}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert_ok(result)
    assert "no model card" in result.stderr and "cannot check" in result.stderr  # no <model>.json beside it
    imported = result.stdout.split("imported:")[1].split()
    assert not [m for m in imported if m.split(".")[0] in ("training", "losses") or m == "models.networks"]
    out = nib.load(tmp_path / "x" / "synthetic.nii.gz")
    expected = np.moveaxis(expected_translation("t1_to_t2", np.moveaxis(volume, -1, 0)), 0, -1)
    assert np.abs(out.get_fdata() - expected).max() <= UNIT_TOLERANCE * preprocess.intensity_scale(volume)


def test_real_brats_volume(shared_data, standin_run, tmp_path):
    """A real 240x240x155 T1 volume becomes a T2 NIfTI on the same grid, with G's values."""
    source = shared_data / BRATS_T1
    assert source.exists(), f"absent: {source}"
    result = translate(f"--input={source}", f"--output={tmp_path}", f"--logdir={standin_run}")
    assert_ok(result)
    out, original = nib.load(tmp_path / source.name), nib.load(source)
    assert out.shape == (240, 240, 155)
    np.testing.assert_array_equal(out.affine, original.affine)
    raw = original.get_fdata(dtype=np.float32)
    assert nib.aff2axcodes(original.affine)[2] in "SI"  # axial slices along the third axis: sliced as stored
    expected = np.moveaxis(expected_translation("t1_to_t2", np.moveaxis(raw, -1, 0)), 0, -1)
    assert np.abs(out.get_fdata() - expected).max() <= UNIT_TOLERANCE * preprocess.intensity_scale(raw)
    # Skull-stripped: the air is exact zeros around the head, and the output has exact zeros there too.
    axial = np.moveaxis(raw, -1, 0)
    scale = preprocess.intensity_scale(raw)
    air = np.moveaxis(np.stack([reference_air(preprocess.normalize(s, scale)) for s in axial]), 0, -1)
    assert np.all(raw[air] == 0) and air.mean() > 0.5
    assert np.all(out.get_fdata()[air] == 0)


# ---------------------------------------------------------------- DICOM


def write_shuffled_series(folder, stored: np.ndarray, seed: int = 3) -> list:
    """An axial series from pydicom's MR_small.dcm header, 2 mm apart, with files named and numbered in a
    random order: only ImagePositionPatient gives the slice order. Returns the paths in position order."""
    template = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    template.SeriesInstanceUID = generate_uid()
    template.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    template.PixelSpacing, template.SliceThickness = [0.9, 0.8], 2.0
    rng = np.random.default_rng(seed)
    names, instances = rng.permutation(len(stored)), rng.permutation(len(stored)) + 1
    assert list(names) != sorted(names) and list(instances) != sorted(instances)
    folder.mkdir(parents=True)
    paths = []
    for k, pixels in enumerate(stored):
        dataset = copy.deepcopy(template)
        dataset.SOPInstanceUID = generate_uid()
        dataset.set_pixel_data(pixels.astype(np.uint16), "MONOCHROME2", 16)
        dataset.InstanceNumber = int(instances[k])
        dataset.ImagePositionPatient = [-80.0, -95.5, 10.0 + 2.0 * k]
        paths.append(folder / f"IM{names[k]:04d}")  # extension-less, as scanners export them
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_dicom_series_with_shuffled_files(standin_run, tmp_path, direction):
    """Each written file keeps its source's geometry and holds the stand-in's translation of its source's pixels."""
    stored = np.stack([head_phantom((180, 160)) * (1 + k / 5) for k in range(4)]).astype(np.uint16)
    sources = write_shuffled_series(tmp_path / "series", stored)
    result = translate(f"--input={tmp_path / 'series'}", f"--output={tmp_path / 'out'}", f"--logdir={standin_run}",
                       direction=direction)
    assert_ok(result)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(p.name for p in sources)
    expected = expected_translation(direction, stored.astype(np.float32))
    slope = float(pydicom.valuerep.DSfloat(expected.max() / 65535, auto_format=True))
    description = f"SYNTHETIC {DIRECTIONS[direction].result} from {DIRECTIONS[direction].source} " \
                  "(mri-cyclegan, research use)"
    for k, path in enumerate(sources):
        source, out = pydicom.dcmread(path), pydicom.dcmread(tmp_path / "out" / path.name)
        assert [float(v) for v in out.ImagePositionPatient] == [-80.0, -95.5, 10.0 + 2.0 * k]
        assert [float(v) for v in out.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in out.PixelSpacing] == [0.9, 0.8] and float(out.SliceThickness) == 2.0
        assert out.InstanceNumber == source.InstanceNumber
        assert (out.SeriesDescription, out.PhotometricInterpretation) == (description, "MONOCHROME2")
        assert float(out.RescaleSlope) == pytest.approx(slope, rel=1e-6) and float(out.RescaleIntercept) == 0
        values = out.pixel_array.astype(np.float64) * slope
        assert np.abs(values - expected[k]).max() <= slope / 2 + UNIT_TOLERANCE * preprocess.intensity_scale(stored)
    assert len({pydicom.dcmread(tmp_path / "out" / p.name).SeriesInstanceUID for p in sources}) == 1
    (back,) = read_path(str(tmp_path / "out"), on_bad_file="error")  # and the reader puts it in position order
    np.testing.assert_allclose(back.data, expected, atol=slope / 2 + 1e-3)


def test_nifti_as_dicom_validates_and_converts_back_onto_its_grid(standin_run, tmp_path, write_nifti, dicom_tools):
    """--output_format=dicom: a NIfTI becomes an MR series <stem>/ that dciodvfy passes and dcm2niix puts back on
    the NIfTI's grid, holding G's values; an image, which has no patient geometry, is refused in one line."""
    volume = np.stack([head_phantom((160, 192)) * (1 + k / 10) for k in range(3)], axis=-1)
    source = write_nifti(tmp_path / "in" / "sub-01_T1w.nii.gz", volume.astype(np.float32), PERMUTED_LPS)
    assert_ok(translate(f"--input={source}", f"--output={tmp_path / 'out'}", f"--logdir={standin_run}",
                        "--output_format=dicom"))
    series = tmp_path / "out" / "sub-01_T1w"
    assert sorted(os.listdir(series)) == ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm"]
    for path in sorted(series.iterdir()):
        assert dciodvfy_errors(dicom_tools, path) == [], path
    converted = nib.as_closest_canonical(dcm2niix(dicom_tools, series, tmp_path / "back"))
    original = nib.as_closest_canonical(nib.load(source))
    assert converted.shape == original.shape
    assert np.abs(converted.affine - original.affine).max() <= GRID_TOLERANCE_MM
    expected = np.moveaxis(expected_translation("t1_to_t2", np.moveaxis(volume, -1, 0)), 0, -1)
    expected = nib.as_closest_canonical(nib.Nifti1Image(expected, PERMUTED_LPS)).get_fdata()
    slope = float(pydicom.dcmread(series / "IM0001.dcm").RescaleSlope)
    tolerance = slope / 2 + np.abs(expected) * FLOAT32_EPS + UNIT_TOLERANCE * preprocess.intensity_scale(volume)
    assert np.all(np.abs(converted.get_fdata() - expected) <= tolerance)

    image = write_png(tmp_path / "png" / "slice.png", (head_phantom((64, 64)) * 50).astype(np.uint16))
    assert_one_line_error(translate(f"--input={image}", f"--output={tmp_path / 'png_out'}", f"--logdir={standin_run}",
                                    "--output_format=dicom"), "slice.png", "no patient geometry")


# ---------------------------------------------------------------- images


def test_png_and_tiff_give_16bit_pngs_of_the_translation(standin_run, tmp_path):
    """A small 8-bit PNG (padding only) and a 16-bit TIFF larger than the canvas (BOX shrink and restore)."""
    small = (head_phantom((217, 181)) / 6).astype(np.uint8)  # the original dataset's size, 8-bit
    large = (head_phantom((300, 280)) * 40).astype(np.uint16)
    write_png(tmp_path / "in" / "Image #1.png", small)
    write_png(tmp_path / "in" / "deep" / "large.tif", large)
    result = translate(f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}", f"--logdir={standin_run}",
                       direction="t2_to_t1")
    assert_ok(result)
    for name, image in (("Image #1.png", small), ("deep/large.png", large)):
        with Image.open(tmp_path / "out" / name) as written:
            assert written.mode == "I;16" and written.size == image.shape[::-1]
            expected = expected_translation("t2_to_t1", image[np.newaxis].astype(np.float32))[0]
            expected_unit = expected / preprocess.intensity_scale(image.astype(np.float32))
            # round(value x 65535): half a count, plus the network's float32 rounding
            assert np.abs(np.asarray(written) - expected_unit * 65535).max() <= 0.5 + UNIT_TOLERANCE * 65535, name


# ---------------------------------------------------------------- bad input

@pytest.fixture
def folder_with_corrupt_file(tmp_path, write_nifti):
    folder = tmp_path / "in"
    write_png(folder / "good.png", (head_phantom((128, 128)) / 6).astype(np.uint8))
    write_nifti(folder / "good.nii.gz", np.stack([head_phantom((128, 128))] * 2, axis=-1).astype(np.float32))
    (folder / "broken.nii.gz").write_bytes(b"not a nifti file")
    return folder


def test_corrupt_file_skipped_with_warning(standin_run, folder_with_corrupt_file, tmp_path):
    result = translate(f"--input={folder_with_corrupt_file}", f"--output={tmp_path / 'out'}",
                       f"--logdir={standin_run}")
    assert_ok(result)
    assert "skipping bad file" in result.stderr and "broken.nii.gz" in result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["good.nii.gz", "good.png"]


def test_corrupt_file_with_on_bad_file_error(standin_run, folder_with_corrupt_file, tmp_path):
    result = translate(f"--input={folder_with_corrupt_file}", f"--output={tmp_path / 'out'}",
                       f"--logdir={standin_run}", "--on_bad_file=error")
    assert_one_line_error(result, "broken.nii.gz")
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_and_model_are_one_line_errors(tmp_path):
    write_png(tmp_path / "in.png", (head_phantom((128, 128)) / 6).astype(np.uint8))
    no_run = translate(f"--input={tmp_path / 'in.png'}", f"--output={tmp_path / 'out'}", f"--logdir={tmp_path}")
    assert_one_line_error(no_run, "no checkpoint", str(tmp_path))
    no_model = translate(f"--input={tmp_path / 'in.png'}", f"--output={tmp_path / 'out'}",
                         f"--model={tmp_path / 'nothing'}")
    assert_one_line_error(no_model, str(tmp_path / "nothing"))


def test_file_output_for_many_volumes_and_overwriting_are_refused(folder_with_corrupt_file):
    many = translate(f"--input={folder_with_corrupt_file}", f"--output={folder_with_corrupt_file / 'x.nii'}")
    assert_one_line_error(many, "give a folder")
    in_place = translate(f"--input={folder_with_corrupt_file}", f"--output={folder_with_corrupt_file}")
    assert_one_line_error(in_place, "would overwrite")


def test_air_mask_false_writes_the_raw_network_output(standin_run, tmp_path, write_nifti):
    """The stand-in G paints tanh(-2) grey into the air; --air_mask=false keeps it, the default zeroes it."""
    volume = np.stack([head_phantom((96, 120)) * (1 + k / 10) for k in range(3)], axis=-1).astype(np.float32)
    source = write_nifti(tmp_path / "t1.nii.gz", volume)
    for flag, air_mask in (("--air_mask=false", False), ("--air_mask=true", True)):
        output = tmp_path / f"{air_mask}.nii.gz"
        assert_ok(translate(f"--input={source}", f"--output={output}", f"--logdir={standin_run}", flag))
        written = nib.load(output).get_fdata()
        expected = np.moveaxis(expected_translation("t1_to_t2", np.moveaxis(volume, -1, 0), air_mask=air_mask), 0, -1)
        assert np.abs(written - expected).max() <= UNIT_TOLERANCE * preprocess.intensity_scale(volume)
        assert (written[volume == 0] == 0).all() == air_mask  # the phantom's air is exact zeros
