"""What the canvas and the generator's fine texture cost head SSIM on the cohort's test subjects.

    python benchmarks/cohort_ceilings.py --logdir=/work/runs/cohort_id0 \
        --evaluation=/work/runs/cohort_id0/eval_cohort/ckpt-1000

Two probes of a cohort_scans.py evaluation (the same test pairs: evaluate.py's rigid registration, head mask):

1. the canvas ceiling: each real target placed on the 256x256 canvas as its source is (the run's --spacing) and
   brought back to its own grid, by data/preprocess.from_canvas (PIL BOX) and by Lanczos, scored against itself.
   No model can score above it; the baselines work on the original grid and do not pay it;
2. the texture: the saved predictions blurred by a Gaussian of sigma 0.7, 1 and 1.5 pixels (the air kept 0),
   head SSIM per third of each subject's slices (inferior first) beside the unblurred. A gain from blurring is
   what the generator's pixel-scale texture (the transposed convolutions' checkerboard) costs.
"""

import os
import sys

import numpy as np
from absl import app, flags
from PIL import Image
from scipy import ndimage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from data import datasets, masks, preprocess  # noqa: E402
from evaluation import metrics, protocol, report  # noqa: E402

flags.DEFINE_string("logdir", None, "The run whose test split (its saved flags) was evaluated.", required=True)
flags.DEFINE_string("evaluation", None, "cohort_scans.py's output folder of one checkpoint (holds predictions/).",
                    required=True)
FLAGS = flags.FLAGS

SIGMAS = (0.0, 0.7, 1.0, 1.5)
DIRECTIONS = ((0, "t1_to_t2"), (1, "t2_to_t1"))  # the index of the source in a test pair


def head_ssim(target, prediction) -> float:
    return metrics.slice_metrics(target.original, prediction, ["ssim"],
                                 masks.foreground("auto", target.original, target.mask))["ssim_fg"]


def lanczos_from_canvas(canvas: np.ndarray, g: preprocess.Geometry) -> np.ndarray:
    crop = np.asarray(canvas, np.float32)[g.top:g.top + g.resized_height, g.left:g.left + g.resized_width]
    return np.asarray(Image.fromarray(crop, mode="F").resize((g.width, g.height), Image.LANCZOS), np.float32)


def main(argv):
    del argv
    grids = datasets.test_pairs_on_grids(protocol.data_spec(FLAGS.logdir, {}), "rigid")
    print("| direction | canvas round trip, BOX (from_canvas) | Lanczos |\n|---|---|---|")
    for source_index, direction in DIRECTIONS:
        scores = {"box": [], "lanczos": []}
        for pair in grids[source_index]:
            g, target = pair[source_index].geometry, pair[1 - source_index]
            canvas, _ = preprocess.to_canvas(target.original, zoom=(g.resized_height / g.height,
                                                                    g.resized_width / g.width))
            scores["box"].append(head_ssim(target, preprocess.from_canvas(canvas, g)))
            scores["lanczos"].append(head_ssim(target, np.clip(lanczos_from_canvas(canvas, g), 0, None)))
        print(f"| {direction} | {np.nanmean(scores['box']):.3f} | {np.nanmean(scores['lanczos']):.3f} |")

    print("\n| direction | blur sigma (pixels) | head SSIM | inferior third | middle third | superior third |\n"
          "|---|---|---|---|---|---|")
    for source_index, direction in DIRECTIONS:
        pairs = grids[source_index]
        names = report.prediction_file_names([pair[source_index] for pair in pairs])
        scores = {}  # (sigma, third) -> head SSIM per slice
        for subject in sorted({pair[source_index].source for pair in pairs}):
            mine = [i for i, pair in enumerate(pairs) if pair[source_index].source == subject]
            for position, i in enumerate(mine):
                third = min(2, 3 * position // len(mine))
                path = os.path.join(FLAGS.evaluation, "predictions", direction, names[i])
                prediction = np.asarray(Image.open(path), np.float64) / 65535
                for sigma in SIGMAS:
                    blurred = prediction if sigma == 0 else ndimage.gaussian_filter(prediction, sigma) * (prediction > 0)
                    score = head_ssim(pairs[i][1 - source_index], blurred)
                    scores.setdefault((sigma, third), []).append(score)
                    scores.setdefault((sigma, "all"), []).append(score)
        for sigma in SIGMAS:
            cells = " | ".join(f"{np.nanmean(scores[(sigma, part)]):.3f}" for part in ("all", 0, 1, 2))
            print(f"| {direction} | {sigma:g} | {cells} |")


if __name__ == "__main__":
    app.run(main)
