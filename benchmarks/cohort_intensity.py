"""Where each --intensity puts a cohort's tissue: per volume, the head's histogram peak and median after normalising.

A normalisation that suits a cohort puts one tissue at one value on every scan of a contrast: on T1 the
head's main peak is white matter (with grey matter on coarse slices), whether the scan is skull-on or
skull-stripped. The head is masks.head_mask of each slice (above 0.1 of the percentile scale, the largest
component, holes filled); the peak is the mode of its voxels above 0.02 in 100 bins of [0, 1], smoothed.

    python benchmarks/cohort_intensity.py --volumes="/work/cohort/*/*.nii.gz"
"""

import glob
import os
import sys

import numpy as np
from absl import app, flags
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import masks, preprocess, readers  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("volumes", None, "A glob of NIfTI volumes (quote it).", required=True)


def head_peak_and_median(data: np.ndarray, method: str) -> tuple[float, float]:
    head = np.stack([masks.head_mask(s) for s in preprocess.normalize(data)])
    unit = preprocess.normalize(data, preprocess.intensity_scale(data, method))
    counts, edges = np.histogram(unit[head & (unit > 0.02)], bins=100, range=(0.0, 1.0))
    peak = int(np.argmax(ndimage.gaussian_filter1d(counts.astype(float), 1.5)))
    return float((edges[peak] + edges[peak + 1]) / 2), float(np.median(unit[head]))


def main(argv):
    del argv
    paths = sorted(glob.glob(FLAGS.volumes))
    if not paths:
        sys.exit(f"error: --volumes={FLAGS.volumes} matches no file")
    print("| volume | " + " | ".join(f"{m} peak | {m} median" for m in preprocess.INTENSITY) + " |")
    print("|---|" + "---|---|" * len(preprocess.INTENSITY))
    for path in paths:
        volume = readers.read_path(path)[0]
        cells = [f"{value:.3f}" for m in preprocess.INTENSITY for value in head_peak_and_median(volume.data, m)]
        name = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    app.run(main)
