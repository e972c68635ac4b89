"""The README's real-data table: trained runs evaluated on the paired real scans of the shared data folder.

  python benchmarks/real_scans.py --runs=defaults:/tmp/runs/brats_defaults,tuned:/tmp/runs/brats_tuned

Each run is evaluated with evaluate.py, as a user would run it, on the three paired sets of ../shared/data
that the README's runs do not train on: SPM's avg152 T1/T2 templates (one volume pair, every axial slice
with enough head in it), the IXI002 slice pair (a real scan) and the 43 BrainWeb slice pairs of the notebook's
set. Its metrics go to <run>/eval_real/<set>/ (metrics.json, metrics.csv, examples.png). The table printed
holds, per set and direction, the baselines and each run's model row: SSIM and PSNR over the whole slice and
inside the head mask (`--mask=auto`), mean over slices. The baselines are printed once per distinct value: the
histogram baseline depends on the run's training slices, and a run's data flags select its test slices too
(evaluate.py reads them; --min_foreground drops slices with little head), so a run with other data flags gets
its own baseline rows, and every row names its slice count.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")

flags.DEFINE_list("runs", None, "name:logdir pairs of trained runs to evaluate.", required=True)
flags.DEFINE_string("data", SHARED, "The shared data folder.")
flags.DEFINE_bool("reuse", False, "Use a run's existing metrics.json instead of evaluating again.")
FLAGS = flags.FLAGS

SETS = {
    "SPM avg152 templates": ("spm-avg152/avg152T1.nii", "spm-avg152/avg152T2.nii"),
    "IXI002 slice 90": ("ixi002-slice90/IXI002-Guys-0828-T1_slice90.nii.gz",
                        "ixi002-slice90/IXI002-Guys-0828-T2_slice90.nii.gz"),
    "BrainWeb (notebook set)": ("mri-t1t2-slices/Tr1/TrainT1", "mri-t1t2-slices/Tr2/TrainT2"),
}
BASELINES = (("baseline_identity", "identity"), ("baseline_histogram", "histogram"),
             ("oracle_intensity_map", "oracle intensity map"))
COLUMNS = ("ssim", "ssim_fg", "psnr", "psnr_fg")


def evaluate(logdir: str, name: str, test_a: str, test_b: str) -> dict:
    output = os.path.join(logdir, "eval_real", name.split()[0].lower())
    metrics = os.path.join(output, "metrics.json")
    if not (FLAGS.reuse and os.path.exists(metrics)):
        subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), f"--logdir={logdir}",
                        f"--test_a={os.path.join(FLAGS.data, test_a)}", f"--test_b={os.path.join(FLAGS.data, test_b)}",
                        f"--output_dir={output}", "--metrics=ssim,psnr", "--mask=auto"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(metrics) as f:
        return json.load(f)


def label(name: str, metrics: dict, direction: str) -> str:
    """The set and its slice count for this run: a run's --min_foreground also selects its test slices."""
    return f"{name} ({metrics[direction]['ssim']['n']})"


def cells(row: dict) -> str:
    return " | ".join(f"{row[c]['mean']:.3f}" if c.startswith("ssim") else f"{row[c]['mean']:.2f}" for c in COLUMNS)


def main(argv):
    runs = [entry.split(":", 1) for entry in FLAGS.runs]
    print("| set (slices) | direction | row | SSIM | SSIM head | PSNR dB | PSNR head dB |")
    print("|---|---|---|---|---|---|---|")
    for name, (test_a, test_b) in SETS.items():
        results = [(run, evaluate(logdir, name, test_a, test_b)) for run, logdir in runs]
        for direction in ("t1_to_t2", "t2_to_t1"):
            printed = []
            for run, metrics in results:
                baselines = {key: metrics[key][direction] for key, _ in BASELINES}
                if baselines not in printed:
                    suffix = "" if not printed else f" ({run}'s data flags)"
                    for key, title in BASELINES:
                        print(f"| {label(name, metrics, direction)} | {direction} | {title}{suffix} | "
                              f"{cells(baselines[key])} |")
                    printed.append(baselines)
            for run, metrics in results:
                print(f"| {label(name, metrics, direction)} | {direction} | **model: {run}** "
                      f"(step {metrics['checkpoint_step']}) | {cells(metrics[direction])} |")


if __name__ == "__main__":
    app.run(main)
