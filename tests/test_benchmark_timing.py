"""benchmarks/timing.py, the benchmark scripts' shared timing, driven by a fake clock (no wall-clock checks)."""

import numpy as np
import pytest

from benchmarks import timing


class FakeClock:
    """A clock that only moves when a call runs: each call takes the next of `durations` seconds."""

    def __init__(self, durations):
        self.now = 1000.0
        self.durations = list(durations)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def call(self) -> None:
        self.now += self.durations[self.calls]
        self.calls += 1


def test_seconds_is_the_duration_of_one_call():
    clock = FakeClock([2.5])
    assert timing.seconds(clock.call, clock) == 2.5
    assert clock.calls == 1


def test_repeat_leaves_out_the_warm_up_calls():
    clock = FakeClock([30.0, 7.0, 1.0, 2.0, 4.0])  # two slow warm-up calls (tracing), then three timed ones
    assert timing.repeat(clock.call, repeats=3, warmup=2, clock=clock) == [1.0, 2.0, 4.0]
    assert clock.calls == 5


def test_repeat_without_warm_up_times_every_call():
    clock = FakeClock([3.0, 1.0])
    assert timing.repeat(clock.call, repeats=2, clock=clock) == [3.0, 1.0]
    assert clock.calls == 2


@pytest.mark.parametrize("values", [[3.0, 1.0, 2.0], [4.0, 1.0, 3.0, 2.0], [0.5], [2.0, 2.0, 9.0, 1.0, 7.0]])
def test_summary_is_numpys_median_min_and_max(values):
    summary = timing.summarize(values)
    assert (summary.median, summary.minimum, summary.maximum, summary.count) == (
        np.median(values), np.min(values), np.max(values), len(values))


def test_format_scales_and_rounds_each_value():
    summary = timing.Summary(median=0.0123, minimum=0.0114, maximum=0.0151, count=3)
    assert summary.format() == "0.012 s median, 0.011 min, 0.015 max"
    assert summary.format("ms/slice", scale=1e3, digits=0) == "12 ms/slice median, 11 min, 15 max"
    assert summary.format("s/step", scale=10, digits=2) == "0.12 s/step median, 0.11 min, 0.15 max"


CPUINFO = """processor\t: 0
model name\t: Fake Xeon 9999
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16

processor\t: 1
model name\t: Another Model
flags\t\t: fpu sse2
"""


def test_describe_cpu_names_the_first_processor_and_its_flags(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    described = timing.describe_cpu(str(path))
    assert described.startswith("CPU Fake Xeon 9999, ")
    assert described.endswith("AMX: yes (amx_bf16 amx_tile), AVX-512: yes, AVX512_BF16")


def test_describe_cpu_without_cpuinfo_says_unknown(tmp_path):
    described = timing.describe_cpu(str(tmp_path / "absent"))
    assert described.startswith("CPU unknown, ")
    assert described.endswith("AMX: no, AVX-512: no")
