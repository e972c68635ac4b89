"""Can a discriminator tell a run's synthetic T2 from real T2 when the generator stands still?

  python benchmarks/discriminator_probe.py --checkpoint=/tmp/runs/brats_defaults/checkpoints/ckpt-800

In a run the discriminators' losses stay near 0.25, the score of one that answers 0.5 everywhere (the loss is
half the sum of the two least-squares terms). That could mean the 70x70 PatchGAN cannot see what is wrong (the
ventricles' brightness, say), or that the generator keeps moving away from whatever the discriminator has just
learned. This probe tells the two apart: it freezes the checkpoint's T1 -> T2 generator, trains a fresh
discriminator of the design (same architecture, loss and Adam settings as training) on real T2 slices against
the generator's synthetic T2 of the T1 slices, and then judges slices it never trained on (every fifth slice of
the volume, held out). If the loss falls far below 0.25 and the held-out slices are judged right, the
discriminator can tell, and the adversarial game is what keeps the synthetic images where they are.
"""

import os
import sys
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import losses  # noqa: E402
from data import datasets, readers  # noqa: E402
from models.inference import restore_generators  # noqa: E402
from models.networks import build_discriminator  # noqa: E402

BRATS = os.path.join(os.path.dirname(REPO), "shared", "data", "brats", "BraTS-GLI-00001-000", "BraTS-GLI-00001-000")
flags.DEFINE_string("checkpoint", None, "A run's checkpoint (or weights snapshot) whose T1 -> T2 generator is frozen.",
                    required=True)
flags.DEFINE_string("t1", BRATS + "-t1n.nii.gz", "T1 volume (source of the synthetic T2).")
flags.DEFINE_string("t2", BRATS + "-t2w.nii.gz", "T2 volume of the same subject (the real images).")
flags.DEFINE_integer("steps", 1000, "Discriminator updates (batch 1: one real and one synthetic slice each).")
flags.DEFINE_float("lr", 2e-4, "The discriminator's Adam rate (beta_1 0.5, as in training).")
flags.DEFINE_integer("report_every", 100, "Print the mean loss of the last this many steps.")
flags.DEFINE_integer("seed", 0, "Seeds the discriminator's weights and the slice draws.")
FLAGS = flags.FLAGS
HELD_OUT_EVERY = 5


def signed_slices(path: str) -> dict[int, np.ndarray]:
    """{axial index: [256, 256, 1] slice in [-1, 1]}, the training pipeline's slices (default --min_foreground)."""
    return {s.index: s.image[..., np.newaxis] * 2.0 - 1.0
            for s in datasets.volume_slices(readers.read_path(path)[0], 0.05)}


def main(argv):
    del argv
    real_a, real_b = signed_slices(FLAGS.t1), signed_slices(FLAGS.t2)
    indices = sorted(set(real_a) & set(real_b))
    held_out = indices[::HELD_OUT_EVERY]
    trained_on = [i for i in indices if i not in held_out]
    generators, step = restore_generators(FLAGS.checkpoint)
    translate = generators["t1_to_t2"]
    fake_b = {i: translate(real_a[i][np.newaxis], training=False).numpy()[0] for i in indices}
    print(f"checkpoint step {step}: {len(trained_on)} slice pairs to train on, {len(held_out)} held out", flush=True)

    tf.keras.utils.set_random_seed(FLAGS.seed)
    discriminator = build_discriminator("probe")
    optimizer = tf.keras.optimizers.Adam(FLAGS.lr, beta_1=0.5)

    @tf.function
    def update(real, fake):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(losses.discriminator_adversarial(discriminator(real, training=True),
                                                                   discriminator(fake, training=True)))
        variables = discriminator.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rng = np.random.default_rng(FLAGS.seed)
    history, start = [], time.monotonic()
    for update_step in range(1, FLAGS.steps + 1):
        real, fake = rng.choice(trained_on), rng.choice(trained_on)  # unpaired, as in training
        history.append(float(update(real_b[real][np.newaxis], fake_b[fake][np.newaxis])))
        if update_step % FLAGS.report_every == 0:
            print(f"update {update_step}: loss {np.mean(history[-FLAGS.report_every:]):.3f} "
                  f"(mean of the last {FLAGS.report_every}; 0.25 = cannot tell)  {time.monotonic() - start:.0f} s",
                  flush=True)

    def score(image):  # the mean patch score: 1 real, 0 synthetic
        return float(tf.reduce_mean(discriminator(image[np.newaxis], training=False)))

    real_scores = [score(real_b[i]) for i in held_out]
    fake_scores = [score(fake_b[i]) for i in held_out]
    right = sum(s > 0.5 for s in real_scores) + sum(s < 0.5 for s in fake_scores)
    print(f"held-out slices: mean score real {np.mean(real_scores):.2f}, synthetic {np.mean(fake_scores):.2f}; "
          f"judged right {right} of {2 * len(held_out)} (threshold 0.5)")


if __name__ == "__main__":
    app.run(main)
