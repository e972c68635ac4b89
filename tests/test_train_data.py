"""train.py on files: every input format, every --data_dir layout, and bad input without a traceback.

Runs that train are train.py on the narrow networks (--filters=4): what is tested
here is the reading of files, not the 114,344,708-parameter model (tests/test_train_script.py has that).
"""

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

from data import datasets, phantom
from tests.helpers import NARROW, QUICK, checkpoint_step, script, write_dicom, write_png
from tests.test_layouts import documented_split

RUN = ["--epochs=1", "--steps_per_epoch=2", *QUICK]


@pytest.fixture(scope="session")
def scans():
    """Four synthetic subjects' T1 and T2 slices at their raw scale, read-only. Session-scoped, not module-scoped:
    cheap to make, so this module's process-starting tests need not share one pytest-xdist worker
    (tests/conftest.py groups the users of module-scoped fixtures)."""
    slices = phantom.paired_test(4, seed=5)
    for array in slices:
        array.setflags(write=False)
    return slices


def to_uint(images: np.ndarray, top: int) -> np.ndarray:
    return np.round(images / images.max() * top).astype(np.uint8 if top == 255 else np.uint16)


def png_folder(folder: Path, images: np.ndarray, top: int) -> Path:
    for i, image in enumerate(to_uint(images, top)):
        write_png(folder / f"slice {i} #{i}.png", image)  # spaces and '#' on purpose
    return folder


def dicom_series(folder: Path, images: np.ndarray) -> Path:
    """A series with rescale slope/intercept, files without extension in shuffled order."""
    folder.mkdir(parents=True)
    uid = generate_uid()
    stored = to_uint(images, 4000)
    for k in np.random.default_rng(0).permutation(len(stored)):
        write_dicom(folder / f"IM{k:04d}", stored[k], uid, int(k) + 1, position=(0, 0, 2.0 * k),
                    slope=0.5, intercept=10)
    return folder


def nifti_volume(path: Path, images: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    volume = np.transpose(images, (2, 1, 0))[::-1, ::-1]  # slices -> (X, Y, Z) in RAS
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


def assert_clean_failure(result, *names):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), last
    for name in names:
        assert name in last, last


def test_png_8_and_16_bit_folders_with_a_corrupt_file(tmp_path, scans):
    t1, t2 = scans
    train_a = png_folder(tmp_path / "t1 png8", t1, 255)
    (train_a / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (train_a / ".DS_Store").write_bytes(b"\0\1")
    train_b = png_folder(tmp_path / "t2 png16", t2, 65535)
    logdir = tmp_path / "run"
    result = script("train.py", *NARROW, f"--train_a={train_a}", f"--train_b={train_b}", f"--logdir={logdir}", *RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("W") and "broken.png" in line]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert ".DS_Store" not in result.stderr
    assert checkpoint_step(str(logdir)) == 2

    strict = script("train.py", f"--train_a={train_a}", f"--train_b={train_b}", f"--logdir={tmp_path / 'strict'}",
                    "--on_bad_file=error", *RUN)
    assert_clean_failure(strict, "broken.png")


def test_dicom_series_and_nifti_volume(tmp_path, scans):
    t1, t2 = scans
    train_a = dicom_series(tmp_path / "t1 dicom", t1)
    train_b = nifti_volume(tmp_path / "t2.nii.gz", t2, affine=np.diag([-1.0, -1.0, 1.0, 1.0]))
    logdir = tmp_path / "run"
    result = script("train.py", *NARROW, f"--train_a={train_a}", f"--train_b={train_b}", f"--logdir={logdir}", *RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_step(str(logdir)) == 2
    assert "train_a: 4 slices from 1 volumes" in result.stderr
    assert "train_b: 4 slices from 1 volumes" in result.stderr


def test_empty_folder_and_missing_domain(tmp_path, scans):
    empty = tmp_path / "empty"
    empty.mkdir()
    train_b = png_folder(tmp_path / "t2", scans[1], 255)
    result = script("train.py", f"--train_a={empty}", f"--train_b={train_b}", f"--logdir={tmp_path / 'run'}", *RUN)
    assert_clean_failure(result, str(empty))
    alone = script("train.py", f"--train_a={train_b}", f"--logdir={tmp_path / 'run'}", *RUN)
    assert_clean_failure(alone, "--train_b")


def layout_tree(root: Path, layout: str, scans, subjects: int = 4) -> Path:
    """A small dataset in `layout`: each subject one 2-slice T1 and T2 volume."""
    t1, t2 = scans
    for s in range(subjects):
        pair = {"t1": t1[[s, (s + 1) % 4]], "t2": t2[[s, (s + 1) % 4]]}
        if layout == "ixi":
            paths = {c: root / f"IXI-{c.upper()}" / f"IXI{s:03d}-Guys-0{s}-{c.upper()}.nii.gz" for c in pair}
        elif layout == "brats":
            case = f"BraTS-GLI-{s:05d}-000"
            paths = {"t1": root / case / f"{case}-t1n.nii.gz", "t2": root / case / f"{case}-t2w.nii.gz"}
        elif layout == "bids":
            paths = {c: root / f"sub-{s:02d}" / "anat" / f"sub-{s:02d}_{c.upper()}w.nii.gz" for c in pair}
        else:  # cyclegan: the last subject is the test pair
            split = "test" if s == subjects - 1 else "train"
            paths = {"t1": root / f"{split}A" / f"s{s}.nii.gz", "t2": root / f"{split}B" / f"s{s}.nii.gz"}
        for contrast, path in paths.items():
            nifti_volume(path, pair[contrast])
    return root


SUBJECT_IDS = {"cyclegan": "s{}", "ixi": "IXI{:03d}", "brats": "BraTS-GLI-{:05d}-000", "bids": "sub-{:02d}"}
# Slices are compared with numpy's float64 normalisation: a few float32 roundings of values in [0, 1].
NORMALISED_TOLERANCE = 4 * 2.0**-24


def normalised(volume: np.ndarray) -> np.ndarray:
    """preprocess's documented rule, in float64: clip negatives, divide by the 99.5th percentile of the
    positive voxels of the whole volume, clip to [0, 1]."""
    volume = volume.astype(np.float64)
    return np.clip(np.maximum(volume, 0) / np.percentile(volume[volume > 0], 99.5), 0, 1)


def expected_slices(scans, subjects: list[int], contrast: int) -> dict[tuple[str, int], np.ndarray]:
    """(subject, index) -> slice as layout_tree wrote each subject's 2-slice volume, normalised per volume."""
    out = {}
    for s in subjects:
        volume = normalised(scans[contrast][[s, (s + 1) % 4]])
        out.update({(s, index): volume[index] for index in range(2)})
    return out


def assert_slices(slices, expected: dict, layout: str, image=lambda s: s.image) -> None:
    got = {(s.subject, s.index): image(s) for s in slices}
    assert sorted(got) == sorted((SUBJECT_IDS[layout].format(s), index) for s, index in expected)
    for (s, index), pixels in expected.items():
        np.testing.assert_allclose(got[SUBJECT_IDS[layout].format(s), index], pixels, rtol=0,
                                   atol=NORMALISED_TOLERANCE)


@pytest.mark.parametrize("layout", ["cyclegan", "ixi", "brats", "bids"])
def test_each_layout_is_detected_and_split(tmp_path, scans, layout):
    """Which subject lands where (the documented split) and every pixel (the normalised source slices)."""
    root = layout_tree(tmp_path / layout, layout, scans)
    spec = datasets.DataSpec(data_dir=str(root))
    train_a, train_b = datasets.training_slices(spec)
    pairs = datasets.test_pairs(spec)
    if layout == "cyclegan":  # the folders decide: subjects 0-2 train both domains, subject 3 is the test pair
        test, half_a, half_b = [3], [0, 1, 2], [0, 1, 2]
    else:  # unpaired: the layouts' default test_fraction 0.1 and seed 0, over the subject ids
        ids = [SUBJECT_IDS[layout].format(s) for s in range(4)]
        test, half_a, half_b = ([ids.index(i) for i in part] for part in documented_split(ids, 0.1, seed=0))
    assert_slices(train_a, expected_slices(scans, half_a, 0), layout)
    assert_slices(train_b, expected_slices(scans, half_b, 1), layout)
    assert all(a.subject == b.subject and a.index == b.index for a, b in pairs)
    for domain, contrast in ((0, 0), (1, 1)):
        assert_slices([pair[domain] for pair in pairs], expected_slices(scans, test, contrast), layout)
        assert_slices([pair[domain] for pair in pairs], expected_slices(scans, test, contrast), layout,
                      image=lambda s: s.original)


def test_train_py_with_data_dir(tmp_path, scans):
    root = layout_tree(tmp_path / "bids", "bids", scans)
    logdir = tmp_path / "run"
    result = script("train.py", *NARROW, f"--data_dir={root}", f"--logdir={logdir}", *RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_step(str(logdir)) == 2
