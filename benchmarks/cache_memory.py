"""Peak resident memory of the training input pipeline reading from --cache_dir, against the same slices in memory.

Writes synthetic caches of --slices (and a tenth of that) slices per domain through the
cache writer (generated slices, not decoded files, to keep the build quick; the read path
is the real one: cache.build_or_open, then data/pipeline.py unpaired_dataset), then, in a
fresh process per case, draws --batches batches and reports the process's peak resident
memory (VmHWM). The in-memory case holds the same slices as float32, as training does
without --cache_dir, unless cache.memory_refusal refuses them on this machine.

    python benchmarks/cache_memory.py --cache_root=/tmp/cache_memory --train_steps=3

With --train_steps, train.py itself (the full-size model) then trains that many steps from each cache
(--cache_dir, the same data flags, so it opens the cache instead of building one) and its peak resident
memory is reported: the model's memory plus the input's, which should not grow with the data set.

Disk: (slices + slices / 10) x 2 domains x 128 KiB (5.8 GB for 20,000); the caches are kept
for reruns (delete --cache_root afterwards).
"""

import os
import shutil
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402

flags.DEFINE_string("cache_root", "/tmp/cache_memory", "Folder of the benchmark's caches.")
flags.DEFINE_integer("slices", 20_000, "Slices per domain of the large data set (at least 100; the small one has a "
                     "tenth).", lower_bound=1)  # the cases' processes get the small count too: checked in main
flags.DEFINE_integer("batches", 2_000, "Batches drawn per case.", lower_bound=1)
flags.DEFINE_integer("batch_size", 4, "Slices per domain per batch.", lower_bound=1)
flags.DEFINE_integer("timeout", 3_600, "Seconds allowed per case.", lower_bound=1)
flags.DEFINE_integer("train_steps", 0, "Steps of train.py from each cache (0: the pipeline cases only).",
                     lower_bound=0)
flags.DEFINE_enum("case", None, ["cache", "memory"], "Internal: run one case in this process.")
FLAGS = flags.FLAGS

BANK = 64  # distinct phantoms per domain; the data set repeats them shifted, so every slice differs


def spec_for(slices: int):
    from data.datasets import DataSpec

    return DataSpec(synthetic_subjects=slices, synthetic_seed=424242)  # a seed no other cache uses


def write_cache(cache_dir: str, slices: int) -> None:
    """Writes `slices` generated slices per domain unless a valid cache of them exists."""
    import numpy as np

    from data import cache, datasets, phantom, preprocess

    spec = spec_for(slices)
    manifest, mismatch = cache._trusted_manifest(cache_dir, cache.cache_key(spec))
    if manifest is not None and not mismatch:
        return
    geometry = preprocess.Geometry(256, 256, 256, 256, 0, 0)

    def generated(contrast: str):
        bank = [preprocess.normalize(phantom.render(i, contrast, 0)) for i in range(BANK)]
        for i in range(slices):
            image = np.roll(bank[i % BANK], i // BANK, axis=1)
            yield datasets.Slice(image, geometry, f"generated-{i:07d}", f"generated-{contrast}", i)

    start = time.perf_counter()
    cache.write_cache(cache_dir, spec, {"train_a": generated("t1"), "train_b": generated("t2")})
    print(f"wrote {cache_dir}: 2 x {slices} slices in {time.perf_counter() - start:.0f} s", flush=True)


def memory_status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process, in bytes."""
    with open("/proc/self/status") as file:
        fields = dict(line.split(":", 1) for line in file)
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def run_case(case: str, cache_dir: str, slices: int) -> None:
    """One case in this process; prints one line: key=value pairs the parent reads."""
    import numpy as np

    from data import cache, pipeline

    spec = spec_for(slices)
    if case == "memory":
        refusal = cache.memory_refusal(spec)
        if refusal:
            print(f"refused={refusal}")
            return
    slices_a, slices_b, _ = cache.build_or_open(spec, cache_dir)
    if case == "memory":  # the in-memory path's float32 stacks, filled slice by slice to avoid a second copy
        stacks = []
        for cached in (slices_a, slices_b):
            stack = np.empty(cached.shape, np.float32)
            for i in range(len(cached)):
                stack[i] = cached[i]
            stacks.append(stack)
        slices_a, slices_b = stacks
    iterator = iter(pipeline.unpaired_dataset(slices_a, slices_b, FLAGS.batch_size, seed=0))
    next(iterator)
    before = memory_status()

    def draw():
        for _ in range(FLAGS.batches - 1):
            next(iterator)

    seconds = timing.seconds(draw)
    after = memory_status()
    print(" ".join(f"{k}={v}" for k, v in {"before_rss": before["VmRSS"], **after, "seconds": seconds}.items()))


def main(argv):
    del argv
    if FLAGS.case:
        run_case(FLAGS.case, os.path.join(FLAGS.cache_root, str(FLAGS.slices)), FLAGS.slices)
        return
    small = FLAGS.slices // 10
    if small < 10:
        raise app.UsageError(f"--slices={FLAGS.slices}: at least 100 (the small data set has a tenth)")
    needed = 2 * (FLAGS.slices + small) * 256 * 256 * 2
    os.makedirs(FLAGS.cache_root, exist_ok=True)
    free = shutil.disk_usage(FLAGS.cache_root).free
    print(f"disk: {needed / 1e9:.1f} GB needed (less what is already cached), {free / 1e9:.1f} GB free in "
          f"{FLAGS.cache_root}", flush=True)
    for slices in (small, FLAGS.slices):
        write_cache(os.path.join(FLAGS.cache_root, str(slices)), slices)
    command = [sys.executable, os.path.abspath(__file__), f"--cache_root={FLAGS.cache_root}",
               f"--batches={FLAGS.batches}", f"--batch_size={FLAGS.batch_size}"]
    print(f"\n{timing.describe_cpu()}")
    print(f"{FLAGS.batches} batches of {FLAGS.batch_size} slices per domain, no augmentation; "
          f"python {' '.join(sys.argv)}")
    print(f"{'case':8s} {'slices/domain':>13s} {'peak RSS':>9s} {'RSS before':>10s} {'RSS after':>9s} "
          f"{'anon':>8s} {'file':>8s} {'batches/s':>9s}")
    for case, slices in (("cache", small), ("cache", FLAGS.slices), ("memory", FLAGS.slices)):
        result = subprocess.run(command + [f"--case={case}", f"--slices={slices}"], capture_output=True, text=True,
                                timeout=FLAGS.timeout)
        lines = result.stdout.strip().splitlines()
        if result.returncode or not lines:
            print(f"{case:8s} {slices:13,d} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        if lines[-1].startswith("refused="):
            print(f"{case:8s} {slices:13,d} refused: {lines[-1].split('=', 1)[1]}")
            continue
        values = dict(pair.split("=", 1) for pair in lines[-1].split(" "))
        gb = {k: int(values[k]) / 1e9 for k in ("VmHWM", "before_rss", "VmRSS", "RssAnon", "RssFile")}
        print(f"{case:8s} {slices:13,d} {gb['VmHWM']:7.2f}GB {gb['before_rss']:8.2f}GB {gb['VmRSS']:7.2f}GB "
              f"{gb['RssAnon']:6.2f}GB {gb['RssFile']:6.2f}GB {(FLAGS.batches - 1) / float(values['seconds']):9.0f}")


    if FLAGS.train_steps:
        print(f"\ntrain.py, {FLAGS.train_steps} steps from --cache_dir (full-size model, float32, batch 1)")
        for slices in (small, FLAGS.slices):
            print(f"cache    {slices:13,d} peak RSS {train_peak_rss(slices) / 1e9:.2f} GB", flush=True)


def train_peak_rss(slices: int) -> int:
    """Peak resident memory (bytes) of a train.py run on the cache of `slices` slices per domain."""
    import tempfile

    logdir = tempfile.mkdtemp(prefix="cache_memory_run_")
    try:
        train = [sys.executable, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py"),
                 f"--cache_dir={os.path.join(FLAGS.cache_root, str(slices))}", f"--synthetic_subjects={slices}",
                 f"--synthetic_seed={spec_for(slices).synthetic_seed}", "--epochs=1",
                 f"--steps_per_epoch={FLAGS.train_steps}", f"--logdir={logdir}"]
        # A parent of its own, so that RUSAGE_CHILDREN holds train.py's peak alone (ru_maxrss is in KiB on Linux).
        measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if code == 0 else -code)")
        result = subprocess.run([sys.executable, "-c", measure, *train], capture_output=True, text=True,
                                timeout=FLAGS.timeout)
        kib = int(result.stdout.strip().splitlines()[-1])
        if kib <= 0:
            raise RuntimeError(f"train.py failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        return kib * 1024
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
