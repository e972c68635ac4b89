"""Find the T1 (domain A) and T2 (domain B) files under --data_dir, and pair test volumes.

Layouts:

* cyclegan: trainA/ trainB/ [testA/ testB/]. The lists hold those folders themselves:
  `read_path` recurses them and groups DICOM files into series, which per-file lists
  would break. Missing test folders give empty test lists.
* ixi: IXI-T1/ and IXI-T2/ holding IXI<id>-<site>-<n>-T1.nii.gz / -T2.nii.gz; subject IXI<id>.
* brats: one folder per case (at any depth) holding *-t1n.nii.gz / *-t2w.nii.gz (2023) or
  *_t1.nii.gz / *_t2.nii.gz (older; _t1ce, _t2flair and _flair do not match); subject =
  case folder name.
* bids: sub-*/[ses-*/]anat/*_T1w.nii[.gz] and *_T2w.nii[.gz]; subject sub-XX[_ses-YY].

Splitting the layouts that hold both contrasts per subject (ixi, brats, bids) -- the
unpaired setting: subjects with both contrasts are shuffled with `seed`; a fraction
`test_fraction` of them (at least one when there are two or more; none for 0) is held
out, both contrasts, as the paired test split. The remaining subjects are cut into two
disjoint halves: T1 of the first half trains domain A, T2 of the second half trains
domain B, so no subject's anatomy appears in both training domains and the networks never
see a paired example. A BIDS participant's sessions stay on one side. Subjects with a
single contrast train that domain. When only one subject (or only one after the
hold-out) has both contrasts, the domains cannot be disjoint: it serves both (and, if it
is the only one, the test split too), with a warning.

Test pairing: readers already set `Volume.subject` from IXI, BIDS and BraTS file names
(`readers.subject_from_name`), which `pair_volumes` matches; `subject_id` gives the same
ids, except that for brats it is the case folder name (equal to the file-name id in
standard BraTS naming).
"""

import collections
import dataclasses
import os
import random
import re

from absl import logging

from data.readers import NIFTI_SUFFIXES, BadFileError, Volume, subject_from_name, walk_files

LAYOUTS = ("cyclegan", "ixi", "brats", "bids")

_BRATS_T1 = re.compile(r"(-t1n|_t1)\.nii(\.gz)?$")
_BRATS_T2 = re.compile(r"(-t2w|_t2)\.nii(\.gz)?$")
_BIDS_T1 = re.compile(r"_T1w\.nii(\.gz)?$")
_BIDS_T2 = re.compile(r"_T2w\.nii(\.gz)?$")


@dataclasses.dataclass
class DomainFiles:
    train_a: list[str]  # T1
    train_b: list[str]  # T2
    test_a: list[str]
    test_b: list[str]


def detect_layout(data_dir: str) -> str:
    """The first layout in LAYOUTS whose structure is present in `data_dir`."""
    if not os.path.isdir(data_dir):
        raise BadFileError(f"{data_dir}: --data_dir is not a folder")
    if all(os.path.isdir(os.path.join(data_dir, name)) for name in ("trainA", "trainB")):
        return "cyclegan"
    if all(os.path.isdir(os.path.join(data_dir, name)) for name in ("IXI-T1", "IXI-T2")):
        return "ixi"
    for layout in ("brats", "bids"):
        if any(_contrast_files(data_dir, layout)):
            return layout
    raise BadFileError(
        f"{data_dir}: no known layout; expected trainA/ + trainB/ (cyclegan), IXI-T1/ + IXI-T2/ (ixi), "
        "case folders with *-t1n/*-t2w.nii.gz or *_t1/*_t2.nii.gz (brats), "
        "or sub-*/[ses-*/]anat/*_T1w/_T2w.nii[.gz] (bids)"
    )


def layout_files(data_dir: str, layout: str | None = None, test_fraction: float = 0.1, seed: int = 0) -> DomainFiles:
    """Training and test files of each domain; see the module docstring for the split."""
    layout = layout or detect_layout(data_dir)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), not {test_fraction}")
    if layout == "cyclegan":
        return _cyclegan_files(data_dir)
    t1_files, t2_files = _contrast_files(data_dir, layout)
    for contrast, files in (("T1", t1_files), ("T2", t2_files)):
        if not files:
            raise BadFileError(f"{data_dir}: no {contrast} NIfTI files in the {layout} layout")
    return _split_subjects(_by_person(t1_files, layout), _by_person(t2_files, layout), test_fraction, seed)


def subject_id(path: str, layout: str | None) -> str:
    """The id pairing a subject's T1 and T2: the case folder for brats, else the id in the file name."""
    if layout == "brats":
        return os.path.basename(os.path.dirname(os.path.abspath(path)))
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} or None, not {layout!r}")
    return subject_from_name(path)


def pair_volumes(vols_a: list[Volume], vols_b: list[Volume]) -> list[tuple[Volume, Volume]]:
    """Pair A and B volumes by `subject` (repeated ids pair in order); unmatched ones are dropped."""
    by_subject_b = collections.defaultdict(list)
    for volume in vols_b:
        by_subject_b[volume.subject].append(volume)
    counts = [collections.Counter(v.subject for v in vols) for vols in (vols_a, vols_b)]
    repeated = sorted({subject for count in counts for subject, n in count.items() if n > 1})
    if repeated:
        logging.warning("subject ids repeated within a domain, paired in order: %s", ", ".join(repeated[:5]))
    pairs, unmatched = [], []
    for volume in vols_a:
        if by_subject_b[volume.subject]:
            pairs.append((volume, by_subject_b[volume.subject].pop(0)))
        else:
            unmatched.append(volume.subject)
    unmatched += [volume.subject for left in by_subject_b.values() for volume in left]
    if unmatched:
        logging.warning(
            "pairing by subject: %d of %d A and %d of %d B volumes have no counterpart and are dropped (e.g. %s)",
            len(vols_a) - len(pairs), len(vols_a), len(vols_b) - len(pairs), len(vols_b), ", ".join(unmatched[:5]),
        )
    return pairs


def _cyclegan_files(data_dir: str) -> DomainFiles:
    def folder(name: str, required: bool) -> list[str]:
        path = os.path.join(data_dir, name)
        if os.path.isdir(path):
            return [path]
        if required:
            raise BadFileError(f"{path}: missing folder of the cyclegan layout")
        return []

    return DomainFiles(folder("trainA", True), folder("trainB", True), folder("testA", False), folder("testB", False))


def _contrast_files(data_dir: str, layout: str) -> tuple[list[str], list[str]]:
    """(T1 files, T2 files) of a per-subject layout, sorted."""
    if layout == "ixi":
        return tuple(_niftis(os.path.join(data_dir, folder)) for folder in ("IXI-T1", "IXI-T2"))
    if layout == "brats":
        files = _niftis(data_dir)
        return _matching(files, _BRATS_T1), _matching(files, _BRATS_T2)
    files = [path for path in _niftis(data_dir) if _in_bids_anat(os.path.relpath(path, data_dir))]
    return _matching(files, _BIDS_T1), _matching(files, _BIDS_T2)


def _niftis(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return [path for path in walk_files(folder) if path.lower().endswith(NIFTI_SUFFIXES)]


def _matching(paths: list[str], pattern: re.Pattern) -> list[str]:
    return [path for path in paths if pattern.search(os.path.basename(path))]


def _in_bids_anat(relative_path: str) -> bool:
    """sub-*/anat/<file> or sub-*/ses-*/anat/<file> (derivatives/ and sourcedata/ do not match)."""
    parts = relative_path.split(os.sep)
    return (
        len(parts) in (3, 4)
        and parts[0].startswith("sub-")
        and parts[-2] == "anat"
        and (len(parts) == 3 or parts[1].startswith("ses-"))
    )


def _by_person(paths: list[str], layout: str) -> dict[str, list[str]]:
    """Group by participant: a BIDS subject's sessions stay together so the split cannot separate them."""
    grouped = collections.defaultdict(list)
    for path in paths:
        subject = subject_id(path, layout)
        grouped[subject.split("_ses-")[0] if layout == "bids" else subject].append(path)
    return grouped


def _test_count(n_subjects: int, test_fraction: float) -> int:
    """At least one when there are two or more subjects, always leaving one to train on."""
    if test_fraction == 0 or n_subjects < 2:
        return 0
    return min(n_subjects - 1, max(1, round(test_fraction * n_subjects)))


def _split_subjects(
    t1: dict[str, list[str]], t2: dict[str, list[str]], test_fraction: float, seed: int
) -> DomainFiles:
    """Hold out paired test subjects, then split the rest so the training domains share no subject."""
    paired = sorted(set(t1) & set(t2))
    random.Random(seed).shuffle(paired)
    if len(paired) == 1:
        logging.warning(
            "only one subject (%s) has both T1 and T2: it trains both domains and is the test split", paired[0]
        )
        test, half_a, half_b = paired, paired, paired
    else:
        n_test = _test_count(len(paired), test_fraction)
        test, rest = paired[:n_test], paired[n_test:]
        if len(rest) == 1:
            logging.warning("only one training subject (%s) has both T1 and T2: it trains both domains", rest[0])
            half_a = half_b = rest
        else:
            cut = (len(rest) + 1) // 2
            half_a, half_b = rest[:cut], rest[cut:]
    only_t1 = sorted(set(t1) - set(t2))
    only_t2 = sorted(set(t2) - set(t1))

    def files(by_subject: dict[str, list[str]], subjects: list[str]) -> list[str]:
        return sorted(path for subject in subjects for path in by_subject[subject])

    return DomainFiles(
        train_a=files(t1, half_a + only_t1),
        train_b=files(t2, half_b + only_t2),
        test_a=files(t1, test),
        test_b=files(t2, test),
    )
