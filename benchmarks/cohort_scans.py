"""Issue 25's table: runs trained on a cohort, scored on its held-out test subjects beside the baselines.

    python benchmarks/cohort_scans.py --runs=head_median:/work/runs/cohort_hm
    python benchmarks/cohort_scans.py --runs=step1000:/work/runs/cohort_hm:/work/runs/cohort_hm/weights/ckpt-1000

Each run is evaluated with evaluate.py on the test split of the --data_dir it trained on (its saved flags; the
cohort of docs/cohort.md puts the T1 and T2 of each test subject in testA/ and testB/), with --register (rigid by
default: a subject's raw T1 and T2 series are on different grids, and the head may move between them) and the
head mask (--mask=auto). Metrics go to <run>/eval_cohort/ (or <run>/eval_cohort/<checkpoint name>/). Printed:

1. per direction, SSIM and PSNR over the slice and inside the head: the baselines (identity, histogram
   matching to the training data, the reversed histogram, the oracle intensity map fitted on the test pair
   itself) and each model;
2. the ventricles: the synthetic image's mean in the CSF over its mean in white matter, per test subject, on the
   middle third of its slices, beside the real image's, and the synthetic/real ratio of the two (the issue asks
   at least 0.9 for synthetic T2). The tissue masks are evaluation/ventricles.tissue_masks of the real pair
   after rescaling each real image so that the 99th percentile of its central head is 1: the masks' fixed
   thresholds were set on scans whose brightest central tissue is at 1, which a skull-on scan normalised
   to its scalp fat is not;
3. head SSIM by position: each test subject's slices cut into thirds in slice order (inferior, with the neck
   and skull base; middle, the ventricles; superior), from metrics.csv, for the baselines and each model;
4. the scalp band: the mean of the synthetic T2 in the outer band of the head (the head mask minus the head
   mask eroded by BAND_PIXELS) over the real T2's mean there. Far above 1 is the bright scalp band of a model
   that reversed the skull and scalp with the brain;
5. bone against CSF, per subject and third, T1 -> T2: the synthetic T2's mean where both real images are dark
   (bone, air spaces, vessels) over its mean in the CSF (evaluation/ventricles.dark_to_csf, over the whole head),
   beside the real T2's, and the real T1's median in each (on the network's scale: whether the T1 value alone could
   tell them apart). Near 1 is a model that makes every dark T1 tissue as bright as CSF.
"""

import csv
import json
import os
import subprocess
import sys
import types

import numpy as np
from absl import app, flags
from PIL import Image
from scipy import ndimage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from data import datasets, masks  # noqa: E402
from evaluation import protocol, report, ventricles  # noqa: E402
from models.directions import DIRECTIONS  # noqa: E402

flags.DEFINE_list("runs", None, "name:logdir pairs of trained runs (their newest checkpoint), or "
                  "name:logdir:checkpoint.", required=True)
flags.DEFINE_enum("register", "rigid", ["world", "rigid"], "How evaluate.py puts each test subject's T1 and T2 on "
                  "one grid.")
flags.DEFINE_bool("reuse", False, "Use a run's metrics.json when it is of the checkpoint asked for.")
FLAGS = flags.FLAGS

BASELINES = (("baseline_identity", "identity"), ("baseline_histogram", "histogram"),
             ("baseline_reversed_histogram", "reversed histogram"), ("oracle_intensity_map", "oracle intensity map"))
COLUMNS = ("ssim", "ssim_fg", "psnr", "psnr_fg")
BAND_PIXELS = 6  # about 5.5 mm at the test subjects' 0.91 mm pixels
THIRDS = ("inferior", "middle", "superior")


def parse_run(entry: str) -> tuple[str, str, str | None]:
    name, logdir, *checkpoint = entry.split(":", 2)
    return name, logdir, (checkpoint[0] if checkpoint else None)


def evaluate(logdir: str, checkpoint: str | None) -> tuple[dict, str]:
    output = os.path.join(logdir, "eval_cohort", *((os.path.basename(checkpoint),) if checkpoint else ()))
    metrics = os.path.join(output, "metrics.json")
    wanted = os.path.realpath(checkpoint) if checkpoint else None
    done = FLAGS.reuse and os.path.exists(metrics)
    if done and wanted:
        with open(metrics) as f:
            done = os.path.realpath(json.load(f)["checkpoint"]) == wanted
    if not done:
        subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), f"--logdir={logdir}",
                        *([f"--checkpoint={checkpoint}"] if checkpoint else []), f"--output_dir={output}",
                        "--metrics=ssim,psnr", "--mask=auto", f"--register={FLAGS.register}", "--save_predictions"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(metrics) as f:
        return json.load(f), output


def unit_rescaled(image: np.ndarray) -> np.ndarray:
    """`image` over the 99th percentile of its central head, clipped to [0, 1] (for the tissue masks only)."""
    centre = ventricles.central_half(image.shape) & (image > ventricles.HEAD)
    return np.clip(image / np.percentile(image[centre], 99), 0.0, 1.0)


def subject_thirds(pairs: list, t1_source: str) -> list[list]:
    """The pairs of the test subject whose T1 file is `t1_source`, cut into thirds in slice order (inferior first;
    the middle one holds the lateral ventricles)."""
    mine = [pair for pair in pairs if pair[0].source == t1_source]
    return [mine[i * len(mine) // 3: (i + 1) * len(mine) // 3] for i in range(3)]


def predictions(output: str, direction: str, sources: list) -> np.ndarray:
    folder = os.path.join(output, "predictions", direction)
    return np.stack([np.asarray(Image.open(os.path.join(folder, name)), np.float64) / 65535
                     for name in report.prediction_file_names(sources)])


def by_third(output: str, evaluation: str) -> list[float]:
    """Mean head SSIM of `evaluation`'s slices in metrics.csv, per third of each subject's slices (in slice order,
    inferior first: the canvases are canonically oriented)."""
    with open(os.path.join(output, "metrics.csv")) as f:
        rows = [row for row in csv.DictReader(f) if row["direction"] == evaluation]
    thirds = [[], [], []]
    for subject in sorted({row["subject"] for row in rows}):
        mine = sorted((row for row in rows if row["subject"] == subject), key=lambda row: int(row["slice"]))
        for position, row in enumerate(mine):
            thirds[min(2, 3 * position // len(mine))].append(float(row["ssim_fg"]))
    return [float(np.nanmean(third)) for third in thirds]


def outer_band(real: np.ndarray) -> np.ndarray:
    heads = np.stack([masks.head_mask(image) for image in real])
    return heads & ~np.stack([ndimage.binary_erosion(head, iterations=BAND_PIXELS) for head in heads])


def main(argv):
    del argv
    runs = [parse_run(entry) for entry in FLAGS.runs]
    results = [(name, *evaluate(logdir, checkpoint), logdir) for name, logdir, checkpoint in runs]
    print("| direction | row | SSIM | SSIM head | PSNR dB | PSNR head dB |\n|---|---|---|---|---|---|")
    for direction in DIRECTIONS:
        printed = []
        for name, metrics, _, _ in results:
            lines = [f"| {direction} | {title} ({metrics[key][direction]['ssim']['n']} slices) | "
                     + " | ".join(_cell(metrics[key][direction], c) for c in COLUMNS) + " |" for key, title in BASELINES]
            if lines not in printed:  # as printed: a rigid registration's threads vary the 12th digit between runs
                print("\n".join(lines))
                printed.append(lines)
            print(f"| {direction} | **model: {name}** (step {metrics['checkpoint_step']}) | "
                  + " | ".join(_cell(metrics[direction], c) for c in COLUMNS) + " |")

    print("\n| direction | row | head SSIM, inferior third | middle third | superior third |\n|---|---|---|---|---|")
    for direction in DIRECTIONS:
        shown = [(f"{key}/{direction}", title, results[0][2]) for key, title in BASELINES]  # the first run's test set
        shown += [(direction, f"**model: {name}**", output) for name, _, output, _ in results]
        for key, title, output in shown:
            print(f"| {direction} | {title} | " + " | ".join(f"{v:.3f}" for v in by_third(output, key)) + " |")

    spec = protocol.data_spec(results[0][3], {})
    on_grids = datasets.test_pairs_on_grids(spec, FLAGS.register)
    print("\n| subject | direction | real CSF/WM | " + " | ".join(f"{name} CSF/WM (of real)" for name, *_ in results)
          + " |\n|---|---|---|" + "---|" * len(results))
    band_rows = []
    for subject_source in sorted({pair[0].source for pair in on_grids[0]}):
        for grid, direction in ((0, "t1_to_t2"), (1, "t2_to_t1")):
            chosen = subject_thirds(on_grids[grid], subject_source)[1]
            t1, t2 = (np.stack([pair[i].original for pair in chosen]) for i in (0, 1))
            csf, white = ventricles.tissue_masks(unit_rescaled(t1), unit_rescaled(t2))
            real = t2 if grid == 0 else t1
            real_ratio = ventricles.csf_to_white_matter(real, csf, white)
            cells = []
            for name, _, output, _ in results:
                synthetic = predictions(output, direction, [pair[grid] for pair in chosen])
                ratio = ventricles.csf_to_white_matter(synthetic, csf, white)
                cells.append(f"{ratio:.2f} ({ratio / real_ratio:.0%})")
                if grid == 0:
                    band = outer_band(real)
                    band_rows.append((os.path.basename(subject_source), name, synthetic[band].mean() / real[band].mean()))
            print(f"| {os.path.basename(subject_source)} ({csf.sum()} CSF, {white.sum()} WM pixels) | {direction} | "
                  f"{real_ratio:.2f} | " + " | ".join(cells) + " |")
    print("\n| subject | run | synthetic T2 / real T2 in the head's outer band |\n|---|---|---|")
    for subject, name, ratio in band_rows:
        print(f"| {subject} | {name} | {ratio:.2f} |")

    print("\n| subject | third | real T1 median, dark / CSF | real T2 dark/CSF | "
          + " | ".join(f"{name} dark/CSF" for name, *_ in results) + " |\n|---|---|---|---|" + "---|" * len(results))
    for subject_source in sorted({pair[0].source for pair in on_grids[0]}):
        for third, chosen in zip(THIRDS, subject_thirds(on_grids[0], subject_source)):
            t1, t2 = (np.stack([pair[i].original for pair in chosen]) for i in (0, 1))
            units = unit_rescaled(t1), unit_rescaled(t2)
            head = np.stack([masks.head_mask(a) & masks.head_mask(b) for a, b in zip(*units)])
            dark, csf = ventricles.dark_tissue_masks(*units, head)
            cells = [ventricles.dark_to_csf(predictions(output, "t1_to_t2", [pair[0] for pair in chosen]), dark, csf)
                     for _, _, output, _ in results]
            print(f"| {os.path.basename(subject_source)} ({dark.sum()} dark, {csf.sum()} CSF pixels) | {third} | "
                  f"{np.median(t1[dark]):.3f} / {np.median(t1[csf]):.3f} | {ventricles.dark_to_csf(t2, dark, csf):.2f} | "
                  + " | ".join(f"{c:.2f}" for c in cells) + " |")


def _cell(row: dict, column: str) -> str:
    return f"{row[column]['mean']:.3f}" if column.startswith("ssim") else f"{row[column]['mean']:.2f}"


if __name__ == "__main__":
    app.run(main)
