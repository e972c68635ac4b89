r"""Trains the T1 <-> T2 CycleGAN with a hand-written GradientTape loop (training/loop.py).

  python train.py --epochs=200 --logdir=runs/     # built-in synthetic data
  tensorboard --logdir runs

Running the same command again resumes from the newest checkpoint in --logdir.
"""

import sys

from absl import app, flags, logging

from training import config

FLAGS = flags.FLAGS
config.define_flags()
for name in config.FLAG_NAMES:  # listed by --help, not only --helpfull
    flags.declare_key_flag(name)
flags.DEFINE_string("logdir", "runs/", "Run directory: checkpoints, TensorBoard events and the saved flags.")


def main(argv):
    del argv
    from training import loop

    try:
        loop.train(config.TrainConfig.from_values(FLAGS), FLAGS.logdir)
    except loop.TrainingError as error:
        logging.error("%s", error)
        sys.exit(f"error: {error}")
    except loop.Stopped as stopped:
        logging.warning("%s", stopped)
        sys.exit(stopped.exit_code)


if __name__ == "__main__":
    app.run(main)
