r"""Translates T1 <-> T2 brain MRI with a trained generator, back into the input's format and grid.

  python translate.py --direction=t1_to_t2 --input=sub-01_T1w.nii.gz --output=out/ --logdir=runs/
  python translate.py --direction=t1_to_t2 --input=dicom/t1_series/ --output=synthetic_t2/ --model=exported/t1_to_t2

--input is a file, a folder (searched recursively; DICOM files grouped into series) or a glob.
NIfTI -> NIfTI (same shape, affine and header), DICOM series -> a new DICOM series, PNG/TIFF/JPEG
-> 16-bit PNG; --output_format=dicom writes NIfTI volumes as DICOM series too. The work is in models/translation.py; behaviour per format: docs/translate.md.
Synthetic images are for research and education, never for diagnosis.
"""

import sys

from absl import app, flags, logging

import data.flags  # noqa: F401  (defines --on_bad_file and --min_foreground)
from data import readers
from models import translation
from models.directions import DIRECTIONS

FLAGS = flags.FLAGS

flags.DEFINE_enum("direction", None, list(DIRECTIONS), "t1_to_t2 (generator G) or t2_to_t1 (generator F).")
flags.DEFINE_string("input", None, "A file, a folder (searched recursively) or a glob of NIfTI, DICOM or PNG/TIFF/JPEG.")
flags.DEFINE_string("output", None, "A folder (created) mirroring the input names; or a .nii/.nii.gz/.png file when "
                                    "the input is one volume of that kind.")
flags.DEFINE_string("logdir", "runs/", "Run directory whose newest checkpoint is used (unless --model is given).")
flags.DEFINE_string("model", None, "An exported SavedModel folder (export.py), used instead of a checkpoint in "
                    "--logdir; when its card <folder>.json is there, it must name --direction.")
flags.DEFINE_string("checkpoint", None, "A checkpoint to use instead of the newest in --logdir, e.g. "
                    "runs/x/checkpoints/ckpt-1200 or a weights-only snapshot runs/x/weights/ckpt-1200.")
flags.DEFINE_enum("output_format", "input", list(translation.OUTPUT_FORMATS),
                  "input: each volume in its own format (NIfTI, DICOM series, 16-bit PNG); dicom: NIfTI volumes "
                  "as DICOM series too (a folder <stem>/ of IM0001.dcm, ... on the file's grid). Images cannot be "
                  "written as DICOM (no patient geometry).")
flags.DEFINE_bool("overwrite", False, "Allow writing a translation over its input file (refused otherwise).")
flags.DEFINE_integer("batch_size", 8, "Slices per network call.", lower_bound=1)
flags.DEFINE_bool("air_mask", True, "Write 0 where the input is air (background connected to the image border); "
                  "false: the raw network output everywhere.")
flags.mark_flags_as_required(["direction", "input", "output"])


def main(argv):
    del argv
    if FLAGS.model and FLAGS.checkpoint:
        sys.exit("error: give --model (an exported SavedModel) or --checkpoint, not both")
    try:
        count = translation.translate(FLAGS.direction, FLAGS.input, FLAGS.output, FLAGS.model, FLAGS.logdir,
                                      FLAGS.on_bad_file, FLAGS.min_foreground, FLAGS.batch_size,
                                      air_mask=FLAGS.air_mask, checkpoint=FLAGS.checkpoint, overwrite=FLAGS.overwrite,
                                      output_format=FLAGS.output_format)
    except (readers.BadFileError, OSError, ValueError) as error:
        sys.exit(f"error: {' '.join(str(error).split())}")
    logging.info("translated %d volume(s) %s into %s", count, FLAGS.direction, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
