"""translate.py end to end: every input format back in its own format and grid, bad input as one-line errors.

Most tests use an identity SavedModel (output = input), so the values written can be checked exactly:
they must be the input clipped at its intensity scale, on its own grid and in its own orientation.
The checkpoint path is tested with a one-step training run.
"""

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tensorflow as tf
from PIL import Image

from data import preprocess
from data.readers import read_path
from tests.helpers import PERMUTED_LPS, ROOT, script, write_mr_series, write_png

BRATS_T1 = "brats/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1n.nii.gz"


class _Identity(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 256, 256, 1], tf.float32, name="images")])
    def serve(self, images):
        return {"translated": tf.identity(images)}


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory):
    """A SavedModel with export.py's serving_default signature (images -> translated) that returns its input."""
    path = str(tmp_path_factory.mktemp("identity"))
    module = _Identity()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def translate(*args: str):
    return script("translate.py", "--direction=t1_to_t2", *args)


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
    """An ellipse of 'tissue' with a ramp inside, zero air around it; values up to ~1000 like a scan.

    The ellipse covers about half of each slice, far above --min_foreground (0.05), which is measured on the
    slice itself (data/datasets.volume_slices), so every slice of it is translated.
    """
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    inside = x**2 / 0.8 + y**2 / 0.6 < 1
    return inside * (400 + 600 * (x + 1) / 2)


def expected_identity(data: np.ndarray) -> np.ndarray:
    """An identity network's output in the input's scale: the input clipped at its scale (its 99.5th percentile)."""
    return np.minimum(np.maximum(data, 0), preprocess.intensity_scale(data))


# ---------------------------------------------------------------- NIfTI

def test_nifti_checkpoint_keeps_shape_affine_and_empty_slices(trained_run, tmp_path, write_nifti):
    volume = np.stack([head_phantom((160, 192))] * 5 + [np.zeros((160, 192))], axis=-1)  # last slice: air only
    source = write_nifti(tmp_path / "in" / "sub-01_T1w.nii.gz", volume.astype(np.float32), PERMUTED_LPS)
    result = translate(f"--input={source}", f"--output={tmp_path / 'out'}", f"--logdir={trained_run}")
    assert_ok(result)
    assert "wrote" in result.stderr and "1 of 6 slices below --min_foreground written as 0" in result.stderr
    out = nib.load(tmp_path / "out" / "sub-01_T1w.nii.gz")
    assert out.shape == volume.shape and out.get_data_dtype() == np.float32
    np.testing.assert_array_equal(out.affine, nib.load(source).affine)
    assert b"synthetic T2w from T1w" in out.header["descrip"].tobytes()
    data = out.get_fdata()
    assert np.isfinite(data).all() and data.min() >= 0
    assert data[..., :5].max() > 0 and data[..., 5].max() == 0  # the air slice stays 0
    assert data.max() <= preprocess.intensity_scale(volume) * 1.0001  # the input's scale


def test_nifti_values_in_input_scale_and_orientation(identity_model, tmp_path, write_nifti):
    """Also: an exported model needs no training code (translate.py run so that it lists its imports)."""
    volume = np.stack([head_phantom((150, 200)) * (1 + k / 10) for k in range(3)], axis=-1)
    source = write_nifti(tmp_path / "t1.nii", volume.astype(np.float32), PERMUTED_LPS)
    list_imports_at_exit = ("import atexit, runpy, sys; atexit.register(lambda: print('imported:', *sys.modules)); "
                            "sys.argv[0] = 'translate.py'; runpy.run_path('translate.py', run_name='__main__')")
    result = subprocess.run(
        [sys.executable, "-c", list_imports_at_exit, "--direction=t1_to_t2", f"--input={source}",
         f"--output={tmp_path / 'x' / 'synthetic.nii.gz'}", f"--model={identity_model}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert_ok(result)
    imported = result.stdout.split("imported:")[1].split()
    assert not [m for m in imported if m.split(".")[0] in ("training", "losses") or m == "models.networks"]
    out = nib.load(tmp_path / "x" / "synthetic.nii.gz")
    np.testing.assert_allclose(out.get_fdata(), expected_identity(volume), rtol=1e-5, atol=1e-3)


def test_real_brats_volume(shared_data, trained_run, tmp_path):
    """The issue's 'done when': a real 240x240x155 T1 volume becomes a T2 NIfTI on the same grid."""
    source = shared_data / BRATS_T1
    if not source.exists():
        pytest.skip(f"absent: {source}")
    result = translate(f"--input={source}", f"--output={tmp_path}", f"--logdir={trained_run}")
    assert_ok(result)
    out = nib.load(tmp_path / source.name)
    assert out.shape == (240, 240, 155)
    np.testing.assert_array_equal(out.affine, nib.load(source).affine)


# ---------------------------------------------------------------- DICOM and images

def test_dicom_series_folder(identity_model, tmp_path):
    stored = np.stack([head_phantom((180, 160)) * (1 + k / 5) for k in range(4)]).astype(np.uint16)
    sources = write_mr_series(tmp_path / "t1_series", stored)
    result = translate(f"--input={tmp_path / 't1_series'}", f"--output={tmp_path / 'out'}",
                       f"--model={identity_model}")
    assert_ok(result)
    outputs = [pydicom.dcmread(tmp_path / "out" / p.name) for p in sources]
    assert {d.SeriesDescription for d in outputs} == {"SYNTHETIC T2w from T1w (mri-cyclegan, research use)"}
    assert len({d.SeriesInstanceUID for d in outputs}) == 1
    assert outputs[0].SeriesInstanceUID != pydicom.dcmread(sources[0]).SeriesInstanceUID
    (back,) = read_path(str(tmp_path / "out"), on_bad_file="error")
    expected = expected_identity(stored.astype(np.float32))
    np.testing.assert_allclose(back.data, expected, atol=float(outputs[0].RescaleSlope) / 2 + 1e-3)


def test_png_folder_gives_16bit_pngs_of_the_original_sizes(identity_model, tmp_path):
    small = (head_phantom((217, 181)) / 4).astype(np.uint8)  # the original dataset's size, 8-bit
    large = (head_phantom((300, 280)) * 60).astype(np.uint16)  # larger than the canvas: resized there and back
    write_png(tmp_path / "in" / "Image #1.png", small)
    write_png(tmp_path / "in" / "deep" / "large.tif", large)
    result = translate(f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}", f"--model={identity_model}")
    assert_ok(result)
    assert "no model card" in result.stderr and "cannot check" in result.stderr  # no <model>.json beside it
    with Image.open(tmp_path / "out" / "Image #1.png") as image:
        assert image.mode == "I;16" and image.size == (181, 217)
        expected = np.round(preprocess.normalize(small.astype(np.float32)) * 65535)
        np.testing.assert_allclose(np.asarray(image), expected, atol=2)
    with Image.open(tmp_path / "out" / "deep" / "large.png") as image:
        assert image.mode == "I;16" and image.size == (280, 300)


# ---------------------------------------------------------------- bad input

@pytest.fixture
def folder_with_corrupt_file(tmp_path, write_nifti):
    folder = tmp_path / "in"
    write_png(folder / "good.png", (head_phantom((128, 128)) / 4).astype(np.uint8))
    write_nifti(folder / "good.nii.gz", np.stack([head_phantom((128, 128))] * 2, axis=-1).astype(np.float32))
    (folder / "broken.nii.gz").write_bytes(b"not a nifti file")
    return folder


def test_corrupt_file_skipped_with_warning(identity_model, folder_with_corrupt_file, tmp_path):
    result = translate(f"--input={folder_with_corrupt_file}", f"--output={tmp_path / 'out'}",
                       f"--model={identity_model}")
    assert_ok(result)
    assert "skipping bad file" in result.stderr and "broken.nii.gz" in result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["good.nii.gz", "good.png"]


def test_corrupt_file_with_on_bad_file_error(identity_model, folder_with_corrupt_file, tmp_path):
    result = translate(f"--input={folder_with_corrupt_file}", f"--output={tmp_path / 'out'}",
                       f"--model={identity_model}", "--on_bad_file=error")
    assert_one_line_error(result, "broken.nii.gz")
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_and_model_are_one_line_errors(tmp_path):
    write_png(tmp_path / "in.png", (head_phantom((128, 128)) / 4).astype(np.uint8))
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
