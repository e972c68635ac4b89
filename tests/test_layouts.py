"""data/layouts.py: layout detection, subject ids, the disjoint unpaired split and test pairing."""

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.layouts import DomainFiles, detect_layout, layout_files, pair_volumes, subject_id
from data.readers import BadFileError, Volume, read_path

TINY = np.arange(8, dtype=np.float32).reshape(2, 2, 2)


def build(root: Path, relative_paths: list[str], write_nifti) -> Path:
    """A tree of tiny NIfTI files (PNG where the name says so) under `root`."""
    for relative in relative_paths:
        path = root / relative
        if relative.endswith(".png"):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.arange(4, dtype=np.uint8).reshape(2, 2)).save(path)
        else:
            write_nifti(path, TINY)
    return root


def ixi_tree(root: Path, n_subjects: int, write_nifti) -> Path:
    names = [f"IXI{100 + k:03d}-Guys-{k:04d}" for k in range(n_subjects)]
    return build(root, [f"IXI-{c}/{n}-{c}.nii.gz" for n in names for c in ("T1", "T2")], write_nifti)


def ixi_files(root: Path, n_subjects: int, contrast: str) -> dict[str, list[str]]:
    """What ixi_tree wrote for one contrast: subject id -> its file."""
    return {f"IXI{100 + k:03d}": [str(root / f"IXI-{contrast}/IXI{100 + k:03d}-Guys-{k:04d}-{contrast}.nii.gz")]
            for k in range(n_subjects)}


def subjects(files: list[str], layout: str) -> set[str]:
    return {subject_id(path, layout) for path in files}


def documented_split(people: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str], list[str]]:
    """The module docstring's rule for two or more paired people: (test, domain A, domain B).

    Shuffle the sorted people with random.Random(seed); hold out round(fraction * n) (at least one for a
    non-zero fraction, always leaving one); the first ceil(half) of the rest train A, the others B.
    """
    order = sorted(people)
    random.Random(seed).shuffle(order)
    n_test = 0 if test_fraction == 0 else min(len(order) - 1, max(1, round(test_fraction * len(order))))
    test, rest = order[:n_test], order[n_test:]
    return test, rest[: (len(rest) + 1) // 2], rest[(len(rest) + 1) // 2 :]


def files_of(tree: dict[str, list[str]], people: list[str]) -> list[str]:
    return sorted(path for person in people for path in tree[person])


def volume(subject: str) -> Volume:
    return Volume(f"/x/{subject}.png", "image", np.zeros((1, 2, 2), np.float32), subject, {})


# ---------------------------------------------------------------- detection and subject ids

def test_cyclegan_layout_lists_the_domain_folders(tmp_path, write_nifti):
    build(tmp_path, ["trainA/a.png", "trainB/b.png", "testA/c.png"], write_nifti)
    assert detect_layout(str(tmp_path)) == "cyclegan"
    files = layout_files(str(tmp_path))
    assert files == DomainFiles([str(tmp_path / "trainA")], [str(tmp_path / "trainB")], [str(tmp_path / "testA")], [])
    assert len(read_path(files.train_a[0])) == 1


def test_ixi_layout(tmp_path, write_nifti):
    ixi_tree(tmp_path, 3, write_nifti)
    assert detect_layout(str(tmp_path)) == "ixi"
    assert subject_id(str(tmp_path / "IXI-T1/IXI002-Guys-0828-T1.nii.gz"), "ixi") == "IXI002"


def test_brats_layout_ignores_t1ce_and_flair(tmp_path, write_nifti):
    names = ["t1", "t1ce", "t2", "flair", "t2flair", "seg"]
    build(tmp_path, [f"BraTS20_{k:03d}/BraTS20_{k:03d}_{n}.nii.gz" for k in range(4) for n in names], write_nifti)
    build(tmp_path, [f"BraTS-GLI-{k:05d}-000/BraTS-GLI-{k:05d}-000-{n}.nii.gz"
                     for k in range(4) for n in ("t1n", "t1c", "t2w", "t2f", "seg")], write_nifti)
    assert detect_layout(str(tmp_path)) == "brats"
    files = layout_files(str(tmp_path), test_fraction=0.25, seed=0)
    cases = [f"BraTS20_{k:03d}" for k in range(4)] + [f"BraTS-GLI-{k:05d}-000" for k in range(4)]
    t1 = {c: [str(tmp_path / c / (f"{c}_t1.nii.gz" if "_" in c else f"{c}-t1n.nii.gz"))] for c in cases}
    t2 = {c: [str(tmp_path / c / (f"{c}_t2.nii.gz" if "_" in c else f"{c}-t2w.nii.gz"))] for c in cases}
    test, half_a, half_b = documented_split(cases, 0.25, seed=0)
    assert len(test) == 2  # 0.25 of 8 cases
    assert files == DomainFiles(files_of(t1, half_a), files_of(t2, half_b), files_of(t1, test), files_of(t2, test))


def test_bids_layout_with_and_without_sessions(tmp_path, write_nifti):
    build(tmp_path, [
        "sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T2w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii", "sub-02/ses-1/anat/sub-02_ses-1_T2w.nii",
        "sub-02/ses-2/anat/sub-02_ses-2_acq-fast_T1w.nii.gz", "sub-02/ses-2/anat/sub-02_ses-2_T2w.nii.gz",
        "sub-03/anat/sub-03_T1w.nii.gz", "sub-03/anat/sub-03_T2w.nii.gz", "sub-03/anat/sub-03_FLAIR.nii.gz",
        "derivatives/sub-01/anat/sub-01_T1w.nii.gz",
    ], write_nifti)
    assert detect_layout(str(tmp_path)) == "bids"
    assert subject_id("sub-02_ses-1_T1w.nii", "bids") == "sub-02_ses-1"
    assert subject_id("sub-01_T1w.nii.gz", "bids") == "sub-01"
    files = layout_files(str(tmp_path), test_fraction=0, seed=0)
    anat = {"sub-01": "sub-01/anat/sub-01_", "sub-03": "sub-03/anat/sub-03_"}
    t1 = {person: [str(tmp_path / f"{prefix}T1w.nii.gz")] for person, prefix in anat.items()}
    t2 = {person: [str(tmp_path / f"{prefix}T2w.nii.gz")] for person, prefix in anat.items()}
    t1["sub-02"] = [str(tmp_path / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"),
                    str(tmp_path / "sub-02/ses-2/anat/sub-02_ses-2_acq-fast_T1w.nii.gz")]
    t2["sub-02"] = [str(tmp_path / "sub-02/ses-1/anat/sub-02_ses-1_T2w.nii"),
                    str(tmp_path / "sub-02/ses-2/anat/sub-02_ses-2_T2w.nii.gz")]
    # Split by person: sub-02's two sessions stay on one side; derivatives/ and FLAIR never appear.
    _, half_a, half_b = documented_split(list(t1), 0, seed=0)
    assert files == DomainFiles(files_of(t1, half_a), files_of(t2, half_b), [], [])


def test_unknown_layout_is_a_clear_error(tmp_path, write_nifti):
    build(tmp_path, ["scans/brain.nii.gz"], write_nifti)
    with pytest.raises(BadFileError, match="no known layout.*trainA.*IXI-T1.*t1n.*sub-"):
        detect_layout(str(tmp_path))
    with pytest.raises(BadFileError, match="not a folder"):
        detect_layout(str(tmp_path / "missing"))
    with pytest.raises(BadFileError, match="T1"):
        layout_files(str(tmp_path), layout="ixi")


def test_subject_id_from_the_name_unless_brats():
    assert subject_id("/d/Image #100.png", None) == "Image #100"
    assert subject_id("/d/a.b.nii.gz", "cyclegan") == "a.b"
    assert subject_id("/d/case7_T2.png", "cyclegan") == "case7"
    assert subject_id("/data/renamed-case/BraTS-GLI-00001-000-t1n.nii.gz", "brats") == "renamed-case"
    with pytest.raises(ValueError, match="layout"):
        subject_id("/d/x.png", "nnunet")


# ---------------------------------------------------------------- the split

def test_split_is_disjoint_complete_and_deterministic(tmp_path, write_nifti):
    ixi_tree(tmp_path, 10, write_nifti)
    files = layout_files(str(tmp_path), test_fraction=0.2, seed=3)
    t1, t2 = ixi_files(tmp_path, 10, "T1"), ixi_files(tmp_path, 10, "T2")
    test_ids, half_a, half_b = documented_split(list(t1), 0.2, seed=3)
    assert (len(test_ids), len(half_a), len(half_b)) == (2, 4, 4)
    assert files == DomainFiles(files_of(t1, half_a), files_of(t2, half_b), files_of(t1, test_ids),
                                files_of(t2, test_ids))
    test = set(test_ids)
    assert layout_files(str(tmp_path), test_fraction=0.2, seed=3) == files
    assert any(layout_files(str(tmp_path), test_fraction=0.2, seed=s) != files for s in range(4, 8))
    # the readers name volumes by IXI id, so the held-out T1 and T2 pair up
    pairs = pair_volumes(read_path(files.test_a[0]) + read_path(files.test_a[1]),
                         read_path(files.test_b[1]) + read_path(files.test_b[0]))
    assert sorted(a.subject for a, b in pairs) == sorted(test) == sorted(b.subject for a, b in pairs)


def test_single_contrast_subjects_train_their_domain(tmp_path, write_nifti):
    ixi_tree(tmp_path, 4, write_nifti)
    build(tmp_path, ["IXI-T1/IXI900-HH-1-T1.nii.gz", "IXI-T2/IXI901-HH-1-T2.nii.gz"], write_nifti)
    files = layout_files(str(tmp_path), test_fraction=0.1, seed=0)
    t1, t2 = ixi_files(tmp_path, 4, "T1"), ixi_files(tmp_path, 4, "T2")
    test, half_a, half_b = documented_split(list(t1), 0.1, seed=0)
    assert len(test) == 1  # at least one of the 4 paired subjects
    t1["IXI900"], t2["IXI901"] = [str(tmp_path / "IXI-T1/IXI900-HH-1-T1.nii.gz")], [str(
        tmp_path / "IXI-T2/IXI901-HH-1-T2.nii.gz")]
    assert files == DomainFiles(files_of(t1, half_a + ["IXI900"]), files_of(t2, half_b + ["IXI901"]),
                                files_of(t1, test), files_of(t2, test))


def test_two_subjects_one_test_one_shared_training(tmp_path, write_nifti, absl_warnings):
    ixi_tree(tmp_path, 2, write_nifti)
    files = layout_files(str(tmp_path), test_fraction=0.1, seed=0)
    t1, t2 = ixi_files(tmp_path, 2, "T1"), ixi_files(tmp_path, 2, "T2")
    (test,), (trains,), _ = documented_split(list(t1), 0.1, seed=0)
    assert files == DomainFiles(t1[trains], t2[trains], t1[test], t2[test])
    assert [m for m in absl_warnings() if "trains both domains" in m] == [
        f"only one training subject ({trains}) has both T1 and T2: it trains both domains"]


def test_invalid_arguments(tmp_path, write_nifti):
    ixi_tree(tmp_path, 2, write_nifti)
    with pytest.raises(ValueError, match="test_fraction"):
        layout_files(str(tmp_path), test_fraction=1.0)
    with pytest.raises(ValueError, match="layout"):
        layout_files(str(tmp_path), layout="nnunet")


# ---------------------------------------------------------------- pairing

def test_pair_volumes_drops_unmatched_with_a_count(absl_warnings):
    pairs = pair_volumes([volume("s1"), volume("s2"), volume("s3")], [volume("s3"), volume("s1"), volume("s9")])
    assert [(a.subject, b.subject) for a, b in pairs] == [("s1", "s1"), ("s3", "s3")]
    assert any("1 of 3 A and 1 of 3 B" in m for m in absl_warnings())


# ---------------------------------------------------------------- real data (../shared/data)

def test_real_slices_pair_by_file_stem(shared_data, tmp_path):
    slices = shared_data / "mri-t1t2-slices"
    (tmp_path / "trainA").symlink_to(slices / "Tr1/TrainT1")
    (tmp_path / "trainB").symlink_to(slices / "Tr2/TrainT2")
    files = layout_files(str(tmp_path))
    vols_a, vols_b = read_path(files.train_a[0]), read_path(files.train_b[0])
    assert len(pair_volumes(vols_a, vols_b)) == 43


def test_real_ixi_pair_in_ixi_layout(shared_data, tmp_path):
    for contrast in ("T1", "T2"):
        (tmp_path / f"IXI-{contrast}").mkdir()
        name = f"IXI002-Guys-0828-{contrast}_slice90.nii.gz"
        (tmp_path / f"IXI-{contrast}" / name).symlink_to(shared_data / "ixi002-slice90" / name)
    assert detect_layout(str(tmp_path)) == "ixi"
    files = layout_files(str(tmp_path))
    ((t1, t2),) = pair_volumes(read_path(files.test_a[0]), read_path(files.test_b[0]))
    assert t1.subject == "IXI002" and t1.data.shape == t2.data.shape == (1, 256, 150)


def test_real_brats_case(shared_data):
    root = shared_data / "brats"
    assert detect_layout(str(root)) == "brats"
    files = layout_files(str(root))
    assert files.test_a == files.train_a and files.test_b == files.train_b  # the single case serves both
    assert subjects(files.train_a, "brats") == {"BraTS-GLI-00001-000"}
