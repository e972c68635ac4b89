"""Timing shared by the benchmark scripts: warm-up excluded, several repetitions, median, min and max, the CPU.

    from benchmarks import timing   # after the script puts the repository root on sys.path

    first = timing.seconds(call)                       # the first call alone (tracing, allocation)
    times = timing.repeat(call, repeats=5, warmup=2)   # 2 untimed calls, then 5 timed ones
    print(timing.summarize(times).format("s/step"))    # "1.671 s/step median, 1.650 min, 1.690 max"
    print(timing.describe_cpu())                       # "CPU AMD EPYC, 2 logical cores (2 usable), ..."

The clock is a parameter (default time.perf_counter) so that tests can drive it.
"""

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence


def seconds(call: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    """The seconds one call of `call` takes."""
    start = clock()
    call()
    return clock() - start


def repeat(call: Callable[[], object], repeats: int, warmup: int = 0,
           clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Calls `call` `warmup` times untimed, then `repeats` times timed; the timed calls' seconds, in order."""
    for _ in range(warmup):
        call()
    return [seconds(call, clock) for _ in range(repeats)]


@dataclasses.dataclass(frozen=True)
class Summary:
    median: float
    minimum: float
    maximum: float
    count: int

    def format(self, unit: str = "s", scale: float = 1.0, digits: int = 3) -> str:
        """'1.234 s median, 1.200 min, 1.300 max': each value times `scale`, to `digits` decimals."""
        median, minimum, maximum = (f"{value * scale:.{digits}f}" for value in (self.median, self.minimum,
                                                                                 self.maximum))
        return f"{median} {unit} median, {minimum} min, {maximum} max"


def summarize(values: Sequence[float]) -> Summary:
    """Median, minimum and maximum of the repetitions' values (seconds, or rates)."""
    return Summary(statistics.median(values), min(values), max(values), len(values))


def describe_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (from `cpuinfo`), its cores, and whether it has AMX, AVX-512 and AVX512_BF16."""
    model, flags_line = "unknown", ""
    try:
        with open(cpuinfo) as file:
            for line in file:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags_line:
                    flags_line = line.split(":", 1)[1]
    except OSError:
        pass
    cpu_flags = set(flags_line.split())
    amx = sorted(flag for flag in cpu_flags if flag.startswith("amx"))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"CPU {model}, {os.cpu_count()} logical cores ({usable} usable), "
            f"AMX: {'yes (' + ' '.join(amx) + ')' if amx else 'no'}, "
            f"AVX-512: {'yes' if 'avx512f' in cpu_flags else 'no'}"
            f"{', AVX512_BF16' if 'avx512_bf16' in cpu_flags else ''}")
