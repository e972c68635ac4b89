"""Our CycleGAN against the authors' PyTorch reference (benchmarks/torch_reference.py), side by side.

  pip install -e ".[compare]"    # PyTorch 2.13.0, the reference framework (also in the dev extra)
  python benchmarks/compare_pytorch.py --steps=5 --repeats=5 --warmup=2

One process runs both frameworks with the same thread count (--threads, default all cores):
torch.set_num_threads / set_num_interop_threads and TensorFlow's intra-op / inter-op thread pools are
set to it before TensorFlow starts (TensorFlow's own default for both is the number of cores). After
--warmup untimed calls per side, the sides take turns (ours, theirs, ours, theirs, ...) for --repeats
rounds of --steps calls each, so that load from other processes falls on both alike; the median and the
minimum over the rounds are reported, and their ratio ours/theirs (below 1: ours is faster).

- train: one CycleGAN step, batch 1, 1 x 256 x 256, float32, image pools off (pool_size 0) on both sides:
  ours is training/cyclegan.py's compiled step (XLA as --xla, default auto = train.py's default: XLA on
  GPU only); theirs is the authors' optimize_parameters() (torch_reference.ReferenceCycleGAN).
- inference: one generator forward per --batch_sizes, reported per slice: ours is build_generator in a
  tf.function with training=False (as models/inference.py runs it); theirs is the U-Net in eval mode
  under torch.no_grad(). Both read the result into NumPy each call.

Without PyTorch the script says how to install it, times our side alone and exits 0.

FLOPs (multiply-adds of the convolutions x 2; normalisation, activations, losses and the Adam updates,
about 1% more, are not counted). Per image, with G and D one forward pass of a generator and of a
discriminator, and G1, D1 those of their first convolution:

  forward:   6 G (fake, cycled and identity images of both directions) + 2 D (adversarial terms of the
             generator step) + 4 D (each discriminator on a real and a detached fake image)
  backward:  weight gradients of the 6 G passes (6 G) and input gradients through them (6 G), except into
             the 4 passes whose input is a real image (-4 G1); input gradients only through the 2 D passes
             of the generator step (their weights are frozen there, 2 D); weight gradients (4 D) and input
             gradients except into the images (4 D - 4 D1) of the discriminator step
  step = 18 G - 4 G1 + 16 D - 4 D1 multiply-adds = 313.47 GFLOP at 256 x 256 (G = 11.90, D = 6.23 GFLOP).

Issue 11's "about 326 GFLOP" is the usual estimate of 3 x the forward cost of all 12 passes,
3 x (6 G + 6 D) = 326.17 GFLOP: it counts the discriminators' weight gradients in the generator step,
which neither side computes (12.45 GFLOP), and the input gradients into the real images (0.27 GFLOP).
torch.utils.flop_counter counts 313.47 GFLOP on their step (printed below when PyTorch is present).
Ours takes the G and F gradients in two tape.gradient calls, so its traced graph holds the backward
pass through the cycled images twice (337.19 GFLOP of live convolutions); after Grappler's
common-subgraph elimination the graph TensorFlow runs holds the same 126 + 118 + 116 convolutions and
313.47 GFLOP as theirs (checked once by hand with tensorflow.python.grappler; not re-run here).

GFLOP/s are compared with a 4096 x 4096 float32 matmul (2 x 4096^3 FLOP) timed in each framework with
the same threads: the machine's practical peak for dense float32 work.
"""

import datetime
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402

FLAGS = flags.FLAGS
IMAGE_SIZE = 256
PARTS = ("train", "inference")
MATMUL_SIZE = 4096


def _define_flags() -> None:
    """Defined when run as a script only: tests import this module next to train.py's flags (--xla)."""
    flags.DEFINE_integer("steps", 5, "Timed calls per round.", lower_bound=1)
    flags.DEFINE_integer("repeats", 5, "Rounds per side, alternating ours and theirs.", lower_bound=1)
    flags.DEFINE_integer("warmup", 2, "Untimed calls per side first (tracing, allocation, caches).", lower_bound=1)
    flags.DEFINE_integer("threads", os.cpu_count(), "Threads of both frameworks (intra-op and inter-op).",
                         lower_bound=1)
    flags.DEFINE_enum("xla", "auto", ["auto", "true", "false"],
                      "Compile our train step with XLA; auto: on GPU only (train.py's default --xla).")
    flags.DEFINE_list("batch_sizes", ["1", "8"], "Generator batch sizes timed in the inference part.")
    flags.DEFINE_list("parts", list(PARTS), "What to time: train, inference or both.")
    flags.DEFINE_integer("probe_repeats", 3, "Timed 4096x4096 matmuls per framework (after one warm-up).",
                         lower_bound=1)


# ---------------------------------------------------------------- FLOPs

def conv_macs(in_hw: tuple[int, int], c_in: int, c_out: int, kernel: int, stride: int, padding: int,
              transposed: bool = False) -> tuple[int, tuple[int, int]]:
    """Multiply-adds of one 2-D convolution on one image, and its output height and width.

    A convolution does c_in x kernel^2 multiply-adds per output value; a transposed one the same per input
    value and output channel (it scatters each input value through its kernel). Zero padding is counted.
    """
    h, w = in_hw
    if transposed:
        out = ((h - 1) * stride - 2 * padding + kernel, (w - 1) * stride - 2 * padding + kernel)
        return h * w * c_in * c_out * kernel * kernel, out
    out = ((h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1)
    return out[0] * out[1] * c_out * c_in * kernel * kernel, out


def generator_convs(size: int = IMAGE_SIZE, channels: int = 1, ngf: int = 64, levels: int = 8):
    """The U-Net's convolutions as (in_hw, c_in, c_out, kernel, stride, padding, transposed), input first.

    Ours (models/networks.py) and theirs have the same ones: 4x4 stride-2 down-convolutions to 1x1, then
    transposed ones back, each decoder level reading its output concatenated with the skip."""
    widths = [min(ngf * 2 ** i, ngf * 8) for i in range(levels)]  # 64, 128, 256, 512, 512, 512, 512, 512
    convs, hw, c_in = [], size, channels
    for width in widths:
        convs.append(((hw, hw), c_in, width, 4, 2, 1, False))
        hw, c_in = hw // 2, width
    for level in reversed(range(levels)):  # level 7 is the bottleneck: no skip to concatenate
        c_in = widths[level] * (1 if level == levels - 1 else 2)
        c_out = widths[level - 1] if level else channels
        convs.append(((hw, hw), c_in, c_out, 4, 2, 1, True))
        hw *= 2
    return convs


def discriminator_convs(size: int = IMAGE_SIZE, channels: int = 1, ndf: int = 64):
    """The 70x70 PatchGAN's convolutions: three 4x4 stride 2, then 4x4 stride 1 to 512 and to 1 channel."""
    specs = [(channels, ndf, 2), (ndf, 2 * ndf, 2), (2 * ndf, 4 * ndf, 2), (4 * ndf, 8 * ndf, 1), (8 * ndf, 1, 1)]
    convs, hw = [], (size, size)
    for c_in, c_out, stride in specs:
        convs.append((hw, c_in, c_out, 4, stride, 1, False))
        hw = conv_macs(hw, c_in, c_out, 4, stride, 1)[1]
    return convs


def forward_macs(convs) -> int:
    return sum(conv_macs(*conv)[0] for conv in convs)


def step_flops(batch: int = 1, size: int = IMAGE_SIZE) -> dict[str, int]:
    """FLOPs of one CycleGAN train step (the module docstring's formula) and of its parts."""
    g_convs, d_convs = generator_convs(size), discriminator_convs(size)
    g, d = forward_macs(g_convs), forward_macs(d_convs)
    g1, d1 = conv_macs(*g_convs[0])[0], conv_macs(*d_convs[0])[0]
    return {
        "generator_forward": 2 * batch * g,
        "discriminator_forward": 2 * batch * d,
        "step": 2 * batch * (18 * g - 4 * g1 + 16 * d - 4 * d1),
        "three_times_forward": 2 * batch * 3 * (6 * g + 6 * d),  # issue 11's estimate
    }


# ---------------------------------------------------------------- timing

def warm_up(run) -> float:
    """FLAGS.warmup untimed calls; returns the first one's seconds (tracing, compiling, allocation)."""
    first = timing.seconds(lambda: run(1))
    if FLAGS.warmup > 1:
        run(FLAGS.warmup - 1)
    return first


def alternate(sides: dict[str, object], per_call: int = 1) -> dict[str, list[float]]:
    """Seconds per call (divided by per_call, e.g. per slice) of each side, one round of FLAGS.steps calls
    per side in turn, FLAGS.repeats rounds."""
    times = {name: [] for name in sides}
    for _ in range(FLAGS.repeats):
        for name, run in sides.items():
            times[name].append(timing.seconds(lambda run=run: run(FLAGS.steps)) / FLAGS.steps / per_call)
    return times


def fmt(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def report(title: str, times: dict[str, list[float]], flops: int | None, peak: float | None,
           first: dict[str, float]) -> None:
    print(f"\n{title}", flush=True)
    summaries = {name: timing.summarize(values) for name, values in times.items()}
    for name, summary in summaries.items():
        line = (f"  {name:6s} {fmt(summary.median)} median, {fmt(summary.minimum)} min "
                f"({summary.count} round(s) of {FLAGS.steps}; first warm-up call {first[name]:.1f} s)")
        if flops:
            rate = flops / summary.median / 1e9
            line += f"; {rate:.1f} GFLOP/s at the median, {flops / summary.minimum / 1e9:.1f} at the min"
            if peak:
                line += f" ({100 * rate / peak:.0f}% of the matmul probe)"
        print(line, flush=True)
    if len(summaries) == 2:
        ours, theirs = summaries.values()
        print(f"  ours/theirs: {ours.median / theirs.median:.2f} (median/median), "
              f"{ours.minimum / theirs.minimum:.2f} (min/min)", flush=True)


def matmul_probe(name: str, multiply) -> float:
    """GFLOP/s of a 4096x4096 float32 matmul (median of FLAGS.probe_repeats after one warm-up)."""
    summary = timing.summarize(timing.repeat(multiply, FLAGS.probe_repeats, warmup=1))
    rate = 2 * MATMUL_SIZE ** 3 / summary.median / 1e9
    print(f"matmul probe ({name}, {MATMUL_SIZE}x{MATMUL_SIZE} float32): {rate:.1f} GFLOP/s "
          f"(median of {summary.count}, {summary.median:.2f} s each)", flush=True)
    return rate


# ---------------------------------------------------------------- main

def main(argv):
    del argv
    parts = [part.strip() for part in FLAGS.parts]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise app.UsageError(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    batch_sizes = [int(size) for size in FLAGS.batch_sizes]
    threads = FLAGS.threads

    try:  # before TensorFlow, whose thread pools must be sized before it starts
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)

    print(f"date {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}", flush=True)
    print(timing.describe_cpu(), flush=True)
    print(f"TensorFlow {tf.__version__}, PyTorch {torch.__version__ if torch else 'not installed'}; threads: "
          f"TensorFlow intra-op {threads}, inter-op {threads}"
          + (f"; torch.set_num_threads({threads}), set_num_interop_threads({threads})" if torch else ""),
          flush=True)
    if torch is None:
        print('PyTorch is not installed: timing our side only. For the comparison: pip install -e ".[compare]"',
              flush=True)
        reference = None
    else:
        from benchmarks import torch_reference as reference

    xla = {"true": True, "false": False, "auto": bool(tf.config.list_physical_devices("GPU"))}[FLAGS.xla]
    flops = step_flops()
    print(f"FLOPs per image: generator forward {flops['generator_forward'] / 1e9:.2f} G, discriminator forward "
          f"{flops['discriminator_forward'] / 1e9:.2f} G; train step {flops['step'] / 1e9:.2f} GFLOP "
          f"(issue 11's 3 x forward of all 12 passes: {flops['three_times_forward'] / 1e9:.2f}; see the docstring)",
          flush=True)

    rng = np.random.default_rng(0)
    left, right = (rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32) for _ in range(2))
    tf_left, tf_right = tf.constant(left), tf.constant(right)
    peak = matmul_probe("TensorFlow", lambda: float(tf.reduce_sum(tf.linalg.matmul(tf_left, tf_right))))
    if torch is not None:
        torch_left, torch_right = torch.from_numpy(left), torch.from_numpy(right)
        peak = max(peak, matmul_probe("PyTorch", lambda: float(torch.mm(torch_left, torch_right).sum())))
    del tf_left, tf_right, left, right

    if "train" in parts:
        from training.config import ModelConfig
        from training.cyclegan import CycleGAN

        image_a = rng.uniform(-1, 1, (1, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
        image_b = rng.uniform(-1, 1, (1, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
        model = CycleGAN(ModelConfig(pool_size=0), total_steps=10**6, decay_start=10**6)
        step = model.compiled_step(xla)
        a, b = tf.constant(image_a), tf.constant(image_b)

        def ours(n):
            for _ in range(n):
                out = step(a, b)
            float(out["generators/total"])

        sides, first = {"ours": ours}, {}
        first["ours"] = warm_up(ours)
        if reference is not None:
            gan = reference.ReferenceCycleGAN(seed=0)
            ta = torch.from_numpy(image_a.transpose(0, 3, 1, 2).copy())
            tb = torch.from_numpy(image_b.transpose(0, 3, 1, 2).copy())

            def theirs(n):
                for _ in range(n):
                    out = gan.train_step(ta, tb)
                float(out["G"])

            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)

            def counted_step():  # the first warm-up step, counted
                with counter:
                    theirs(1)

            first["theirs"] = timing.seconds(counted_step)
            if FLAGS.warmup > 1:
                theirs(FLAGS.warmup - 1)
            counted = counter.get_total_flops()
            print(f"torch.utils.flop_counter on their train step: {counted / 1e9:.2f} GFLOP "
                  f"({'equal to' if counted == flops['step'] else 'NOT equal to'} the formula's "
                  f"{flops['step'] / 1e9:.2f})", flush=True)
            sides["theirs"] = theirs
        report(f"train step (batch 1, {IMAGE_SIZE}x{IMAGE_SIZE}x1, float32, image pools off; ours with XLA "
               f"{'on' if xla else 'off'} (--xla={FLAGS.xla}), per step)", alternate(sides), flops["step"], peak, first)
        del model, step, sides
        if reference is not None:
            del gan

    if "inference" in parts:
        from models.networks import build_generator

        generator = build_generator("generator")
        forward = tf.function(lambda x: generator(x, training=False))
        if reference is not None:
            torch.manual_seed(0)
            their_generator = reference.init_weights(reference.UnetGenerator()).eval()
        for batch in batch_sizes:
            images = rng.uniform(-1, 1, (batch, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
            x = tf.constant(images)

            def ours(n, x=x):
                for _ in range(n):
                    forward(x).numpy()

            sides, first = {"ours": ours}, {"ours": warm_up(ours)}
            if reference is not None:
                tx = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

                def theirs(n, tx=tx):
                    with torch.no_grad():
                        for _ in range(n):
                            their_generator(tx).numpy()

                first["theirs"] = warm_up(theirs)
                sides["theirs"] = theirs
            report(f"generator forward (batch {batch}, eval mode, per slice)", alternate(sides, per_call=batch),
                   flops["generator_forward"], peak, first)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
