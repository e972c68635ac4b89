"""The cohort preprocessing flags: --intensity (one tissue scale for skull-on and skull-stripped scans) and --spacing
(one pixel size across scanners), checked against NumPy on analytic phantoms and through translate's path."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data import datasets, preprocess, readers
from evaluation import protocol
from models import exporting, translation
from rundir import flagfile
from tests.helpers import script

BRAIN, SCALP, SKULL = 100.0, 400.0, 10.0


def disc_phantom(size: int, radius: float, scalp: bool) -> np.ndarray:
    """One slice [size, size]: a brain disc (BRAIN inside, a darker core as ventricles), and with `scalp` a dark
    skull ring and a bright scalp-fat ring around it, as on a skull-on T1; air 0."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    image = np.where(r < radius, BRAIN, 0.0)
    image[r < radius * 0.25] = BRAIN * 0.3
    if scalp:
        image[(r >= radius) & (r < radius + 6)] = SKULL
        image[(r >= radius + 6) & (r < radius + 12)] = SCALP
    return image


def volume(folder, image: np.ndarray, slices: int = 3, spacing: float = 1.0, name: str = "x.nii.gz"
           ) -> readers.Volume:
    """`slices` axial copies of `image` at `spacing` mm per pixel, written as NIfTI in `folder` and read back."""
    voxels = np.repeat(image.T[::-1, ::-1, np.newaxis], slices, axis=2).astype(np.float32)  # [x, y, z], RAS
    nib.save(nib.Nifti1Image(voxels, np.diag([spacing, spacing, 3.0, 1.0])), folder / name)
    return readers.read_path(str(folder / name))[0]


def test_head_median_scale_is_the_median_of_the_head_over_the_level_against_numpy(tmp_path):
    image = disc_phantom(128, 40, scalp=True)
    yy, xx = np.mgrid[:128, :128] - 63.5
    head = np.hypot(yy, xx) < 52  # brain, skull and scalp: the head mask fills the skull ring and ventricles
    expected = np.median(image[head]) / preprocess.HEAD_MEDIAN_LEVEL
    assert preprocess.intensity_scale(volume(tmp_path, image).data, "head_median") == pytest.approx(expected, rel=1e-6)
    positive = image[image > 0]
    assert preprocess.intensity_scale(image, "percentile") == pytest.approx(np.percentile(positive, 99.5), rel=1e-6)


def test_head_median_gives_the_brain_one_value_with_and_without_scalp_where_the_percentile_does_not(tmp_path):
    """The cohort's problem: the percentile maps a skull-on T1's scalp fat to 1 and its brain far below a skull-
    stripped T1's brain. The brain's value under head_median differs only by how much scalp the median sees."""
    brain_value = {}
    for method in preprocess.INTENSITY:
        for scalp in (True, False):
            data = volume(tmp_path, disc_phantom(128, 40, scalp), name=f"{scalp}.nii.gz").data
            unit = preprocess.normalize(data, preprocess.intensity_scale(data, method))
            brain_value[method, scalp] = float(unit[1, 64, 64 + 30])  # inside the brain, outside the ventricles
    percentile_ratio = brain_value["percentile", False] / brain_value["percentile", True]
    median_ratio = brain_value["head_median", False] / brain_value["head_median", True]
    assert percentile_ratio == pytest.approx(SCALP / BRAIN, rel=0.01)  # 1 vs 0.25
    assert median_ratio == pytest.approx(1.0, abs=0.01)  # the medians of both heads are brain voxels


def test_unknown_intensity_method_is_refused():
    with pytest.raises(ValueError, match="intensity must be one of percentile, head_median"):
        preprocess.intensity_scale(np.ones((2, 2)), "zscore")


@pytest.mark.parametrize("native", [0.5, 0.8, 1.25])
def test_spacing_puts_anatomy_at_one_size_on_the_canvas_and_back_on_the_original_grid(tmp_path, native):
    """A brain of radius 40 mm scanned at `native` mm per pixel covers a disc of radius 40 pixels at --spacing=1."""
    size = int(round(110 / native))
    image = disc_phantom(size, 40 / native, scalp=False)
    item = datasets.volume_slices(volume(tmp_path, image, spacing=native), 0.05, keep_original=True, spacing=1.0)[1]
    assert (item.geometry.resized_height, item.geometry.resized_width) == (round(size * native),) * 2
    area_mm2 = (item.image > 0.5).sum()  # 1 mm^2 per canvas pixel; the ring between the ventricles and the edge
    assert area_mm2 == pytest.approx(np.pi * (40**2 - 10**2), rel=0.02)
    back = preprocess.from_canvas(item.image, item.geometry)
    assert back.shape == image.shape
    # Resampling twice blurs the edge only: the disc's area survives to within the edge's width.
    assert (back > 0.5).sum() == pytest.approx((item.original > 0.5).sum(), rel=0.03)


def test_spacing_is_ignored_without_geometry_and_too_large_a_field_is_still_scaled_to_fit(tmp_path):
    image = disc_phantom(100, 30, scalp=False)
    Image.fromarray(image.astype(np.uint16)).save(tmp_path / "x.png")
    plain = readers.read_path(str(tmp_path / "x.png"))[0]
    item = datasets.volume_slices(plain, 0.05, spacing=0.5)[0]
    assert (item.geometry.resized_height, item.geometry.resized_width) == (100, 100)
    wide = datasets.volume_slices(volume(tmp_path, image, spacing=4.0), 0.05, spacing=1.0)[1]  # 400 mm: larger than 256
    assert (wide.geometry.resized_height, wide.geometry.resized_width) == (256, 256)


def test_translation_reads_the_runs_preprocessing_and_writes_back_in_the_inputs_scale(tmp_path):
    """An identity generator through translate's path returns the input in its own units with head_median and
    --spacing, as it does with the defaults (up to the resampling's blur at the edges)."""
    run = tmp_path / "run"
    run.mkdir()
    flagfile.save(str(run), {"intensity": "head_median", "spacing": 1.0})
    spec = translation.training_data_spec(None, str(run))
    assert (spec.intensity, spec.spacing) == ("head_median", 1.0)
    checkpoint_run = translation.training_data_spec(None, "elsewhere", str(run / "checkpoints" / "ckpt-5"))
    assert checkpoint_run == spec
    card = tmp_path / "model.json"
    card.write_text(json.dumps({"direction": "t1_to_t2", "training_flags": {"intensity": "head_median"}}))
    assert translation.training_data_spec(str(tmp_path / "model"), "unused").intensity == "head_median"

    image = disc_phantom(200, 60, scalp=True) * 7.0
    source = volume(tmp_path, image, spacing=0.6)
    unit, count = translation.translate_volume(lambda batch: batch, source, 0.05, 4, air_mask=False,
                                               training_data=spec)
    assert count == 3
    scale = preprocess.intensity_scale(source.data, spec.intensity)
    translation.write_translation(source, unit, str(tmp_path / "out.nii.gz"), "t1_to_t2",
                                  intensity=spec.intensity)
    written = readers.read_path(str(tmp_path / "out.nii.gz"))[0].data
    yy, xx = np.mgrid[:200, :200] - 99.5
    interior = (np.hypot(yy, xx) > 20) & (np.hypot(yy, xx) < 55)  # brain, two pixels and more from its edges
    np.testing.assert_allclose(written[1][interior], BRAIN * 7.0, rtol=0.01)
    # Everywhere: the input clipped at the scale, up to the blur of two resamplings at the rings' edges.
    assert np.abs(written[1] - np.minimum(image, scale)).mean() < 0.02 * scale


def test_export_refuses_runs_whose_preprocessing_translate_raw_does_not_compute(tmp_path):
    flagfile.save(str(tmp_path), {"intensity": "head_median"})
    result = script("export.py", f"--logdir={tmp_path}", f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path} was trained with --intensity=head_median")
    assert not (tmp_path / "out").exists()
    assert exporting.preprocessing_refusal({}, "runs/x") is None
    assert exporting.preprocessing_refusal({"intensity": "percentile"}, "runs/x") is None
    refusal = exporting.preprocessing_refusal({"intensity": "head_median", "spacing": "1.0"}, "runs/x")
    assert "--intensity=head_median --spacing=1.0" in refusal and "translate.py --logdir=runs/x" in refusal


def test_evaluation_and_training_read_with_the_specs_intensity_and_spacing(tmp_path):
    t1 = volume(tmp_path, disc_phantom(128, 40, scalp=True), spacing=0.8, name="sub-01_T1w.nii.gz")
    volume(tmp_path, disc_phantom(128, 40, scalp=True) * 2, spacing=0.8, name="sub-01_T2w.nii.gz")
    spec = datasets.DataSpec(test_a=str(tmp_path / "sub-01_T1w.nii.gz"), test_b=str(tmp_path / "sub-01_T2w.nii.gz"),
                             train_a=str(tmp_path / "sub-01_T1w.nii.gz"), train_b=str(tmp_path / "sub-01_T2w.nii.gz"),
                             intensity="head_median", spacing=1.0)
    head_scale = preprocess.intensity_scale(t1.data, "head_median")
    source, _ = datasets.test_pairs(spec)[1]
    np.testing.assert_allclose(source.original, preprocess.normalize(t1.data[source.index], head_scale), atol=1e-6)
    train_a, _ = datasets.training_slices(spec)
    assert (train_a[0].geometry.resized_height, train_a[0].geometry.resized_width) == (round(128 * 0.8),) * 2


def test_a_reference_resampled_onto_the_sources_grid_goes_on_the_canvas_at_the_sources_spacing(tmp_path):
    """One head (radius 32 mm, a 102.4 mm field) as a T1 of 0.8 mm pixels and a T2 of 0.4 mm pixels: evaluation
    resamples the T2 onto the T1's grid, and at --spacing=1 both must then fill the same 102-pixel square of the
    canvas (not the T2's own 0.4 mm pixels' 51), or examples and summaries show the target at half size."""
    volume(tmp_path, disc_phantom(128, 40, scalp=False), spacing=0.8, name="sub-01_T1w.nii.gz")
    volume(tmp_path, disc_phantom(256, 80, scalp=False), spacing=0.4, name="sub-01_T2w.nii.gz")
    spec = datasets.DataSpec(test_a=str(tmp_path / "sub-01_T1w.nii.gz"), test_b=str(tmp_path / "sub-01_T2w.nii.gz"),
                             spacing=1.0)
    source, target = datasets.test_pairs(spec)[1]
    assert target.original.shape == source.original.shape == (128, 128)
    assert source.geometry == target.geometry
    assert (source.geometry.resized_height, source.geometry.resized_width) == (102, 102)
    head_source, head_target = source.image > 0.05, target.image > 0.05
    assert (head_source & head_target).sum() / (head_source | head_target).sum() > 0.95


def test_an_original_grid_mask_goes_on_the_canvas_where_its_zoomed_slice_went():
    """A 200 x 200 slice at zoom 0.5 fills the canvas's central 100 x 100 (offset 78): its disc of radius 60 pixels
    becomes a disc of radius 30 about the canvas centre, and so must its mask (evaluation's air on the canvas)."""
    yy, xx = np.mgrid[:200, :200] - 99.5
    head = np.hypot(yy, xx) < 60
    _, geometry = preprocess.to_canvas(head.astype(np.float32), zoom=(0.5, 0.5))
    air = protocol.canvas_air(~head, geometry)
    cy, cx = np.mgrid[:256, :256] - 127.5
    radius = np.hypot(cy, cx)
    assert not air[radius < 28].any() and air[radius > 32].all()
