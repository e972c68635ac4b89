"""The README's real-data table: trained runs evaluated on the paired real scans of the shared data folder.

  python benchmarks/real_scans.py --runs=defaults:/tmp/runs/brats_defaults,tuned:/tmp/runs/brats_tuned
  python benchmarks/real_scans.py --runs=step1200:/tmp/runs/long:/tmp/runs/long/weights/ckpt-1200   # a snapshot

Each run is evaluated with evaluate.py, as a user would run it, on the three paired sets of ../shared/data
that the README's runs do not train on: SPM's avg152 T1/T2 templates (one volume pair, every axial slice
with enough head in it), the IXI002 slice pair (a real scan) and the 43 BrainWeb slice pairs of the notebook's
set. Its metrics go to <run>/eval_real/<set>/ (metrics.json, metrics.csv, examples.png), or to
<run>/eval_real/<checkpoint name>/<set>/ for a checkpoint named after the logdir (evaluate.py --checkpoint).
The table printed holds, per set and direction, the baselines and each run's model row: SSIM and PSNR over the
whole slice and inside the head mask (`--mask=auto`), mean over slices. Every run is scored on the same test
slices: the default --min_foreground (0.05) is given to evaluate.py, which would otherwise take the run's own
(a run trained on slices with more head in them would be tested on fewer slices). The baselines are printed
once per distinct value (the histogram baseline depends on a run's training data), and every row names its
slice count.

A second table measures the ventricles, which a bare intensity change gets wrong: the mean of each synthetic
image in the CSF of the central half of the slice over its mean in white matter, both masks thresholded from
the real pair. Real T2 is far above 1 and real T1 far below. It is measured on IXI002 (a real T1/T2 pair the
runs did not see) and on the middle slices of the BraTS case the README's runs train on (a model that gets
them wrong there has not learned the contrast even where it trained). A third table gives, on the same slices,
each image's rank correlation with its source in the central head (evaluation/ventricles.py): a real pair is
near 0 or below (T1 and T2 order the tissues in reverse), an order-keeping re-map of intensities near +1. A
fourth gives each image's mean in that CSF mask, beside the real one's: the ratio can be right while both
tissues are too dark.

A last table scores the SPM templates inside the brain rather than the head (evaluate.py --mask=<file>): the
templates are in MNI space, so nilearn's MNI152 whole-brain mask (its packaged ICBM152 2009 template above 0.2,
no download; `pip install -e ".[real_scans]"`) is their brain, resampled onto their grid by evaluate.py. The
head mask of the skull-base and vertex slices is mostly scalp, face and neck, which a model trained on
skull-stripped brains never saw. The other sets have no brain mask; without nilearn the table is left out with
a message.
"""

import dataclasses
import json
import os
import subprocess
import sys
import types

import numpy as np
from absl import app, flags
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from data import preprocess, readers  # noqa: E402
from evaluation import report  # noqa: E402
from evaluation.ventricles import csf_to_white_matter, rank_correlation_with_source, tissue_masks  # noqa: E402
from rundir.checkpoints import latest_checkpoint  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")

flags.DEFINE_list("runs", None, "name:logdir pairs of trained runs to evaluate (its newest checkpoint), or "
                  "name:logdir:checkpoint for another checkpoint of the run, such as a weights snapshot.",
                  required=True)
flags.DEFINE_string("data", SHARED, "The shared data folder.")
flags.DEFINE_bool("reuse", False, "Use a run's existing metrics.json instead of evaluating again, when it is of the "
                  "checkpoint that would be evaluated.")
FLAGS = flags.FLAGS

SETS = {
    "SPM avg152 templates": ("spm-avg152/avg152T1.nii", "spm-avg152/avg152T2.nii"),
    "IXI002 slice 90": ("ixi002-slice90/IXI002-Guys-0828-T1_slice90.nii.gz",
                        "ixi002-slice90/IXI002-Guys-0828-T2_slice90.nii.gz"),
    "BrainWeb (notebook set)": ("mri-t1t2-slices/Tr1/TrainT1", "mri-t1t2-slices/Tr2/TrainT2"),
}
TRAINING_CASE = ("brats/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1n.nii.gz",
                 "brats/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t2w.nii.gz")
# The ventricle table's pairs: name -> (T1, T2 paths; the slices measured, pooled).
VENTRICLE_SETS = {
    "IXI002 slice 90": (SETS["IXI002 slice 90"], (0,)),
    "BraTS training case, slices 60-100": (TRAINING_CASE, range(60, 101, 5)),
}
BASELINES = (("baseline_identity", "identity"), ("baseline_histogram", "histogram"),
             ("baseline_reversed_histogram", "reversed histogram"), ("oracle_intensity_map", "oracle intensity map"))
COLUMNS = ("ssim", "ssim_fg", "psnr", "psnr_fg")
BRAIN_SET = "SPM avg152 templates"  # the set scored inside a brain mask too
TEST_MIN_FOREGROUND = 0.05  # the flag's default: the same test slices for every run, whatever it trained on


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    logdir: str
    checkpoint: str | None = None  # None: the newest in logdir

    @classmethod
    def parse(cls, entry: str) -> "Run":
        return cls(*entry.split(":", 2))

    def output(self, set_name: str, suffix: str = "") -> str:
        """Where evaluate.py writes this run's results on a set (`suffix` for another mask of the same set)."""
        snapshot = () if self.checkpoint is None else (os.path.basename(self.checkpoint),)
        return os.path.join(self.logdir, "eval_real", *snapshot, set_name.split()[0].lower() + suffix)


def reusable(run: Run, output: str) -> bool:
    """--reuse and a finished evaluation in `output` of the checkpoint that would be evaluated now, with every baseline
    row (a run trained on since, or evaluated before a baseline was added, is evaluated again)."""
    metrics = os.path.join(output, "metrics.json")
    if not (FLAGS.reuse and os.path.exists(metrics) and os.path.isdir(os.path.join(output, "predictions"))):
        return False
    with open(metrics) as f:
        evaluated = json.load(f)
    wanted = run.checkpoint or latest_checkpoint(run.logdir)
    return (os.path.realpath(evaluated["checkpoint"]) == os.path.realpath(wanted)
            and all(key in evaluated for key, _ in BASELINES))


def evaluate(run: Run, name: str, test_a: str, test_b: str, mask: str = "auto", suffix: str = "") -> dict:
    output = run.output(name, suffix)
    metrics = os.path.join(output, "metrics.json")
    checkpoint = [] if run.checkpoint is None else [f"--checkpoint={run.checkpoint}"]
    if not reusable(run, output):
        subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), f"--logdir={run.logdir}", *checkpoint,
                        f"--test_a={os.path.join(FLAGS.data, test_a)}", f"--test_b={os.path.join(FLAGS.data, test_b)}",
                        f"--output_dir={output}", "--metrics=ssim,psnr", f"--mask={mask}", "--save_predictions",
                        f"--min_foreground={TEST_MIN_FOREGROUND}"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(metrics) as f:
        return json.load(f)


def rows(results: list[tuple[str, dict]], direction: str) -> list[tuple[str, dict]]:
    """A direction's rows: the baselines, once per distinct value (they depend on a run's training data), then
    each run's model."""
    out, printed = [], []
    for run, metrics in results:
        baselines = {key: metrics[key][direction] for key, _ in BASELINES}
        if baselines not in printed:
            suffix = "" if not printed else f" ({run}'s data flags)"
            out += [(f"{title}{suffix}", baselines[key]) for key, title in BASELINES]
            printed.append(baselines)
    return out + [(f"**model: {run}** (step {metrics['checkpoint_step']})", metrics[direction])
                  for run, metrics in results]


def cells(row: dict) -> str:
    return " | ".join(f"{row[c]['mean']:.3f}" if c.startswith("ssim") else f"{row[c]['mean']:.2f}" for c in COLUMNS)


def ventricle_table(runs: list[Run]) -> None:
    """The ventricles' brightness: mean CSF over mean white matter, from the predictions evaluate.py saved
    (pooled over the slices measured). Real T2 is far above 1, real T1 far below; a synthetic T2 with dark
    ventricles is below 1. Then each image's rank correlation with its source in the central head: near 0 or
    below for the real pair, near 1 for a translation that keeps the source's order of intensities. Last, each
    image's mean in the CSF ([0, 1] intensities): a ratio can be right with both tissues too dark."""
    header, sets = ["| CSF / white matter"], ["| rank correlation with the source"]
    ratios = {"real (the targets)": [], "source (identity)": [], **{f"**model: {run.name}**": [] for run in runs}}
    csf_means = {"real (the targets)": [], **{f"**model: {run.name}**": [] for run in runs}}
    ranks = {"real (the targets)": [], **{f"**model: {run.name}**": [] for run in runs}}
    for name, ((path_a, path_b), indices) in VENTRICLE_SETS.items():
        test_a, test_b = (os.path.join(FLAGS.data, path) for path in (path_a, path_b))
        volumes = [preprocess.normalize(readers.read_file(path)[0].data) for path in (test_a, test_b)]
        t1, t2 = (volume[list(indices)] for volume in volumes)
        csf, white_matter = tissue_masks(t1, t2)
        header.append(f"{name} ({csf.sum()} and {white_matter.sum()} pixels): synthetic T2 | synthetic T1")
        sets.append(f"{name}: synthetic T2 | synthetic T1")
        ratios["real (the targets)"] += [csf_to_white_matter(t2, csf, white_matter),
                                         csf_to_white_matter(t1, csf, white_matter)]
        ratios["source (identity)"] += [csf_to_white_matter(t1, csf, white_matter),
                                        csf_to_white_matter(t2, csf, white_matter)]
        ranks["real (the targets)"] += [rank_correlation_with_source(t1, t2), rank_correlation_with_source(t2, t1)]
        csf_means["real (the targets)"] += [t2[csf].mean(), t1[csf].mean()]
        for run in runs:
            folder = os.path.join(run.output(name), "predictions")
            for direction, source, source_images in (("t1_to_t2", test_a, t1), ("t2_to_t1", test_b, t2)):
                names = report.prediction_file_names([types.SimpleNamespace(source=source, index=index)
                                                      for index in indices])
                images = np.stack([np.asarray(Image.open(os.path.join(folder, direction, name)), np.float64) / 65535
                                   for name in names])
                ratios[f"**model: {run.name}**"].append(csf_to_white_matter(images, csf, white_matter))
                ranks[f"**model: {run.name}**"].append(rank_correlation_with_source(source_images, images))
                csf_means[f"**model: {run.name}**"].append(images[csf].mean())
    for title, table in ((" | ".join(header), ratios),
                         (" | ".join(sets), ranks),
                         (" | ".join(["| mean in the CSF", *sets[1:]]), csf_means)):
        print("\n" + title + " |")
        print("|---" * (2 * len(VENTRICLE_SETS) + 1) + "|")
        for row, values in table.items():
            print(f"| {row} | " + " | ".join(f"{value:.2f}" for value in values) + " |")


def mni_brain_mask(path: str) -> bool:
    """Writes nilearn's MNI152 whole-brain mask to `path`; False (and a message) without nilearn."""
    try:
        from nilearn import datasets
    except ImportError:
        print("\n(the table inside the brain needs nilearn's MNI152 brain mask: pip install -e \".[real_scans]\")")
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    datasets.load_mni152_brain_mask(resolution=1).to_filename(path)
    return True


def brain_table(runs: list[Run]) -> None:
    """The SPM templates scored inside the MNI152 brain mask: SSIM and PSNR of the _fg columns."""
    mask = os.path.join(runs[0].logdir, "eval_real", "mni152_brain_mask.nii.gz")
    if not mni_brain_mask(mask):
        return
    test_a, test_b = SETS[BRAIN_SET]
    results = [(run.name, evaluate(run, BRAIN_SET, test_a, test_b, mask, "_brain")) for run in runs]
    print(f"\n| {BRAIN_SET} inside the MNI152 brain mask (slices with brain) | direction | row | SSIM brain | "
          "PSNR brain dB |\n|---|---|---|---|---|")
    for direction in ("t1_to_t2", "t2_to_t1"):
        for title, row in rows(results, direction):
            print(f"| {BRAIN_SET} ({row['ssim_fg']['n']}) | {direction} | {title} | {row['ssim_fg']['mean']:.3f} | "
                  f"{row['psnr_fg']['mean']:.2f} |")


def main(argv):
    runs = [Run.parse(entry) for entry in FLAGS.runs]
    print("| set (slices) | direction | row | SSIM | SSIM head | PSNR dB | PSNR head dB |")
    print("|---|---|---|---|---|---|---|")
    for name, (test_a, test_b) in SETS.items():
        results = [(run.name, evaluate(run, name, test_a, test_b)) for run in runs]
        for direction in ("t1_to_t2", "t2_to_t1"):
            for title, row in rows(results, direction):
                print(f"| {name} ({row['ssim']['n']}) | {direction} | {title} | {cells(row)} |")
    for run in runs:  # the training case is evaluated for the ventricle table only, not scored
        evaluate(run, "BraTS training case", *TRAINING_CASE)
    ventricle_table(runs)
    brain_table(runs)


if __name__ == "__main__":
    app.run(main)
