"""Where on the SPM avg152 templates a model wins or loses: head SSIM per slab of axial slices.

  python benchmarks/real_scans.py --runs=defaults:runs/brats_defaults,inversion_prior:runs/brats_prior
  python benchmarks/spm_slabs.py --runs=defaults:runs/brats_defaults,inversion_prior:runs/brats_prior

Reads the predictions that real_scans.py had evaluate.py save (<logdir>/eval_real/spm/predictions) and scores
them, beside identity, histogram matching and reversed histogram matching (the run's training data as
reference), inside the target's head mask (`--mask=auto`, as the README's table) on three slabs of the test
slices: the skull base, the middle of the brain and the vertex. It also prints the real pair's rank
correlation (evaluation/ventricles.py) over all slices and the middle 20: whether the templates order tissues
in reverse where the slab is scored.
"""

import os
import sys

import numpy as np
from absl import app, flags
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from data import datasets, masks  # noqa: E402
from evaluation import baselines, metrics, report  # noqa: E402
from evaluation.ventricles import rank_correlation_with_source  # noqa: E402
from rundir import flagfile  # noqa: E402
from training.config import TrainConfig  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
flags.DEFINE_list("runs", None, "name:logdir pairs, each evaluated by real_scans.py before.", required=True)
flags.DEFINE_string("data", SHARED, "The shared data folder.")
flags.DEFINE_integer("slabs", 3, "Slabs of consecutive test slices, bottom to top.", lower_bound=1)
FLAGS = flags.FLAGS

DIRECTIONS = {"t1_to_t2": (0, 1), "t2_to_t1": (1, 0)}  # source and target index in a (T1, T2) pair


def main(argv):
    runs = dict(entry.split(":", 1) for entry in FLAGS.runs)
    folder = os.path.join(FLAGS.data, "spm-avg152")
    spec = datasets.DataSpec(test_a=os.path.join(folder, "avg152T1.nii"), test_b=os.path.join(folder, "avg152T2.nii"),
                             min_foreground=0.05)  # real_scans.py's test slices
    pairs = datasets.test_pairs(spec)
    t1, t2 = (np.stack([pair[i].original for pair in pairs]) for i in (0, 1))
    middle = slice(len(pairs) // 2 - 10, len(pairs) // 2 + 10)
    whole, centre = rank_correlation_with_source(t1, t2), rank_correlation_with_source(t1[middle], t2[middle])
    print(f"real pair, rank correlation of T2 with T1: all {len(pairs)} slices {whole:+.2f}, middle 20 {centre:+.2f}")
    trained_on = TrainConfig.from_values(flagfile.load(next(iter(runs.values())))).data  # the first run's data
    training = datasets.training_slices(trained_on, keep_original=True)
    print("| direction | slices (index) | " + " | ".join(["identity", "histogram", "reversed histogram", *runs]) + " |")
    print("|---" * (len(runs) + 5) + "|")
    for direction, (source_index, target_index) in DIRECTIONS.items():
        reference = baselines.histogram_reference([s.original for s in training[target_index]])
        names = report.prediction_file_names([pair[source_index] for pair in pairs])
        for slab in np.array_split(np.arange(len(pairs)), FLAGS.slabs):
            scores = {}
            for i in slab:
                source, target = pairs[i][source_index].original, pairs[i][target_index].original
                predictions = {"identity": source, "histogram": baselines.match_histogram(source, reference),
                               "reversed histogram": baselines.match_histogram(source, reference, reverse=True)}
                for run, logdir in runs.items():
                    path = os.path.join(logdir, "eval_real", "spm", "predictions", direction, names[i])
                    predictions[run] = np.asarray(Image.open(path), np.float64) / 65535
                head = masks.head_mask(target)
                for row, prediction in predictions.items():
                    score = metrics.slice_metrics(target, prediction, ["ssim"], head)["ssim_fg"]
                    scores.setdefault(row, []).append(score)
            indices = f"{pairs[slab[0]][target_index].index}-{pairs[slab[-1]][target_index].index}"
            print(f"| {direction} | {len(slab)} ({indices}) | " +
                  " | ".join(f"{np.mean(values):.3f}" for values in scores.values()) + " |")


if __name__ == "__main__":
    app.run(main)
