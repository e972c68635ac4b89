"""A per-op-type table of self time from a TensorFlow profiler trace (train.py --profile_steps=A,B).

  python train.py --epochs=1 --steps_per_epoch=4 --log_every_steps=1 --profile_steps=2,3 --logdir=/tmp/prun
  python benchmarks/op_profile.py --logdir=/tmp/prun --steps=2 --top=20

Reads the newest <logdir>/plugins/profile/*/*.xplane.pb (the XSpace proto the profiler writes; parsed
with TensorFlow's own tensorflow.tsl.profiler.protobuf.xplane_pb2, no TensorBoard plugin needed), takes
the host CPU plane, and on every thread line nests the events by time: an event's self time is its
duration minus that of the events inside it on the same thread. TensorFlow names an op kernel's event
"<op name>:<op type>" (e.g. "gradient_tape/generator_g_5/.../Conv2DBackpropFilter:_MklNativeConv2DBackpropFilter"
with oneDNN on); other events (executor, function calls, tf.data) are listed apart. --steps divides the
totals into per-step figures.

Columns: "% of op time" is a share of the summed self time of all op kernels on all threads (where the
CPU's work goes); "% of wall x cores" divides by the traced window's wall time times --cores, so it is
the share of the machine's core-seconds, and its total says how busy the cores were with op kernels.
Convolutions are grouped by where they run (under gradient_tape/: backward pass), because TensorFlow
runs a transposed convolution's forward pass as Conv2DBackpropInput. The trace is taken with the
profiler on, which slows the traced steps a little (compare their steps_per_second summaries).
"""

import collections
import glob
import os
import re
import sys

from absl import app, flags

flags.DEFINE_string("logdir", None, "Run directory of train.py --profile_steps (or a folder holding *.xplane.pb).")
flags.DEFINE_integer("steps", 1, "Steps in the traced window (B - A + 1), to print per-step seconds.", lower_bound=1)
flags.DEFINE_integer("top", 25, "Op types listed.", lower_bound=1)
flags.DEFINE_integer("cores", os.cpu_count(), "Cores of the traced machine (the last column's denominator).",
                     lower_bound=1)
flags.mark_flag_as_required("logdir")
FLAGS = flags.FLAGS

OP_EVENT = re.compile(r"^[^:\s][^:]*:(_?[A-Z][A-Za-z0-9_]*)$")

# Groups for the summary below the table, by op name and type (first match wins). TensorFlow runs a
# transposed convolution's forward pass as Conv2DBackpropInput, so convolutions are split by where they
# are (under gradient_tape/: the backward pass), not by kernel.
GROUPS = [
    ("optimizer updates (adam/*)", lambda name, kind: name.startswith("adam/")),
    ("convolutions, backward pass (gradient_tape/*)", lambda name, kind: "Conv" in kind and
     name.startswith("gradient_tape/")),
    ("convolutions, forward pass (incl. transposed)", lambda name, kind: "Conv" in kind),
    ("instance norm (forward and gradients)", lambda name, kind: "instance_norm" in name),
    ("layout, transpose, concat, slice, pad, copies", lambda name, kind: bool(re.search(
        r"Transpose|ToTf|Reorder|Reshape|Concat|Slice|Pad|Pack|Identity|Tile|BroadcastTo|Squeeze|ExpandDims|Split",
        kind))),
    ("casts", lambda name, kind: "Cast" in kind),
    ("gradient accumulation (AddN)", lambda name, kind: kind in ("AddN", "AssignAdd") or name.startswith("AddN")),
    ("everything else (activations, losses, dropout, pools, ...)", lambda name, kind: True),
]


def newest_xplane(logdir: str) -> str:
    paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")) or \
        glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        sys.exit(f"no *.xplane.pb under {logdir} (run train.py with --profile_steps=A,B first)")
    return max(paths, key=os.path.getmtime)


def self_times(plane):
    """{op type: [self ps, count]}, non-op self ps, busy threads, (first start, last end) in ps."""
    names = {key: meta.name or meta.display_name for key, meta in plane.event_metadata.items()}
    per_type = collections.defaultdict(lambda: [0, 0])
    per_group = collections.Counter()
    other = collections.Counter()
    threads, start, end = 0, None, None
    for line in plane.lines:
        events = sorted(((line.timestamp_ns * 1000 + event.offset_ps, event.duration_ps,
                          names.get(event.metadata_id, "")) for event in line.events), key=lambda e: (e[0], -e[1]))
        if not events:
            continue
        any_op = False
        stack = []  # [end, name, child ps]

        def close(item):
            nonlocal any_op
            own = item[3] - item[2]
            match = OP_EVENT.match(item[1])
            if match:
                any_op = True
                per_type[match.group(1)][0] += own
                per_type[match.group(1)][1] += 1
                per_group[next(label for label, test in GROUPS if test(item[1], match.group(1)))] += own
            else:
                other[item[1].split(":")[0][:60]] += own

        for begin, duration, name in events:
            while stack and stack[-1][0] <= begin:
                close(stack.pop())
            if stack:
                stack[-1][2] += duration
            stack.append([begin + duration, name, 0, duration])
            start = begin if start is None else min(start, begin)
            end = begin + duration if end is None else max(end, begin + duration)
        while stack:
            close(stack.pop())
        threads += any_op
    return per_type, per_group, other, threads, (start or 0, end or 0)


def main(argv):
    del argv
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = newest_xplane(FLAGS.logdir)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as file:
        space.ParseFromString(file.read())
    planes = [plane for plane in space.planes if plane.name == "/host:CPU"] or list(space.planes)
    per_type, grouped, other, threads = collections.defaultdict(lambda: [0, 0]), collections.Counter(), \
        collections.Counter(), 0
    start, end = None, None
    for plane in planes:
        types, groups, rest, busy, (first, last) = self_times(plane)
        grouped.update(groups)
        for name, (ps, count) in types.items():
            per_type[name][0] += ps
            per_type[name][1] += count
        other.update(rest)
        threads += busy
        if last:
            start = first if start is None else min(start, first)
            end = last if end is None else max(end, last)
    total = sum(ps for ps, _ in per_type.values())
    wall = (end - start) if start is not None else 0
    steps = FLAGS.steps
    print(f"trace {path}")
    print(f"window {wall / 1e12:.2f} s wall ({wall / 1e12 / steps:.2f} s per step over {steps} step(s)); "
          f"op kernels ran on {threads} thread(s); summed op self time {total / 1e12:.2f} s "
          f"({total / 1e12 / steps:.2f} s per step; {100 * total / max(wall * FLAGS.cores, 1):.0f}% of "
          f"wall x {FLAGS.cores} cores)")
    print()
    print(f"| op type | calls per step | self s per step | % of op time | % of wall x {FLAGS.cores} cores |")
    print("|---|---|---|---|---|")
    ranked = sorted(per_type.items(), key=lambda item: -item[1][0])
    for name, (ps, count) in ranked[:FLAGS.top]:
        print(f"| {name} | {count / steps:.0f} | {ps / 1e12 / steps:.3f} | {100 * ps / total:.1f} | "
              f"{100 * ps / max(wall * FLAGS.cores, 1):.1f} |")
    rest = ranked[FLAGS.top:]
    if rest:
        ps = sum(value[0] for _, value in rest)
        print(f"| {len(rest)} other op types | {sum(value[1] for _, value in rest) / steps:.0f} | "
              f"{ps / 1e12 / steps:.3f} | {100 * ps / total:.1f} | {100 * ps / max(wall * FLAGS.cores, 1):.1f} |")
    print()
    print(f"| group (by op name and type) | self s per step | % of op time | % of wall x {FLAGS.cores} cores |")
    print("|---|---|---|---|")
    for group, ps in grouped.most_common():
        print(f"| {group} | {ps / 1e12 / steps:.3f} | {100 * ps / total:.1f} | "
              f"{100 * ps / max(wall * FLAGS.cores, 1):.1f} |")
    print()
    print("non-op events by self time, per step (the calling thread's KernelAndDeviceFunc / EagerLocalExecute is "
          "mostly waiting for the ops above, not work):")
    for name, ps in other.most_common(8):
        print(f"  {ps / 1e12 / steps:.3f} s  {name}")


if __name__ == "__main__":
    app.run(main)
