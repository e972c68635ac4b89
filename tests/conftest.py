"""Shared fixtures: the real MRI folder next to the repository, NIfTI writing and absl warnings."""

import fcntl
import inspect
import logging
import os
import shutil
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # pytest-xdist workers share the cores: each worker's kernels (and the processes its tests start) get their
    # share instead of every worker's thread pools spinning on every core. Inter-op threads stay: collective ops
    # of the distributed tests need several at once.
    share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for variable in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(variable, share)

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import NARROW, QUICK, ROOT, finish_workers, start_workers

# Two logical CPU devices, so that the in-process MirroredStrategy tests (--cpu_replicas=2) can run; this must
# happen before TensorFlow starts its devices. Single-device code places everything on the first one.
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real public MRI, never copied into the repo), or skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MRI test data absent: {SHARED_DATA} (CI provides it at ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def dicom_tools() -> dict[str, str]:
    """The paths of dciodvfy (dicom3tools) and dcm2niix, or skip where they are absent; with REQUIRE_DICOM_TOOLS=1
    (.ci/run, which installs them) their absence fails instead, so CI cannot pass without running them."""
    tools = {name: shutil.which(name) for name in ("dciodvfy", "dcm2niix")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        message = f"DICOM tools absent: {', '.join(missing)} (apt-get install dicom3tools dcm2niix)"
        if os.environ.get("REQUIRE_DICOM_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return tools


@pytest.fixture
def write_nifti():
    """Write `data` with `affine` (default identity = RAS) to `path`; returns the path."""

    def write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
        return path

    return write


@pytest.fixture
def absl_warnings(caplog):
    """A callable returning the absl warning messages logged so far in the test."""
    caplog.set_level(logging.WARNING, logger="absl")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "absl" and r.levelno >= logging.WARNING]


def shared_run(tmp_path_factory, name: str, *flags: str) -> str:
    """The logdir of a one-step run of train.py on the built-in data, made once per test session: under
    pytest-xdist the first worker that needs it trains while the others wait on a lock in the folder all workers
    share, then read the same run.

    Two train.py processes as the workers of one MultiWorkerMirroredStrategy run (loopback ports), so that every
    tool is tested on a distributed run's checkpoint (tests/test_distribute.py checks it).
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # <basetemp>/popen-gw0 -> <basetemp>, common to the workers
    logdir, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            results = finish_workers(start_workers(os.path.join(ROOT, "train.py"), logdir, "--epochs=1",
                                                   "--steps_per_epoch=1", "--batch_size=2", *QUICK, *flags,
                                                   log_dir=shared),
                                     timeout=600)
            assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
            done.touch()
    return str(logdir)


@pytest.fixture(scope="session")
def full_size_run(tmp_path_factory) -> str:
    """A one-step distributed run of the full-size model (114,344,708 parameters), for the tests about it."""
    return shared_run(tmp_path_factory, "full_size_run")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> str:
    """A one-step distributed run of the narrow networks (--filters=4, saved in its flags), shared by the tests of
    the tools that read a run (evaluate.py, translate.py, export.py): they build the width the run saved."""
    return shared_run(tmp_path_factory, "trained_run", *NARROW)


# Fixtures that train or start processes: a test using one belongs to the slow tier.
SLOW_FIXTURES = {"trained_run", "full_size_run", "standin_run", "standin_model", "exported", "references",
                 "run_with_data_dir", "base_run", "uninterrupted"}


def starts_a_process(function, module) -> bool:
    """Whether `function`, or a function of its test module that it calls, runs script() or Popen()."""
    helpers = [getattr(module, name, None) for name in function.__code__.co_names]
    sources = [inspect.getsource(f) for f in [function, *helpers]
               if inspect.isfunction(f) and f.__module__ == module.__name__]
    return any("script(" in source or "Popen(" in source for source in sources)


@pytest.hookimpl(wrapper=True)  # around every other implementation: xdist reads the xdist_group marks in its own
def pytest_collection_modifyitems(config, items):
    """Marks `slow` every test that starts a process (script, Popen) or uses a fixture that does, so that
    `pytest -m "not slow"` is the quick development loop; the README's command still runs everything.

    For pytest-xdist (`-n 2 --dist loadgroup`, pyproject.toml), tests that share a module-scoped fixture stay
    on one worker, so that the fixture's run is made once; every other test goes wherever a worker is free
    (the session's trained run is made once for all workers: see trained_run).
    """
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames) or starts_a_process(item.function, item.module):
            item.add_marker(pytest.mark.slow)
        group = worker_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: -LONG_UNITS.get(unit_of(item), 0))  # stable: the rest keep their order
    result = yield
    if config.getoption("loadgroup", False) and any(item.get_closest_marker("xdist_group") and "@" not in item.nodeid
                                                    for item in items):
        raise pytest.UsageError("pytest-xdist ignored the xdist_group marks (it needs pytest 8; see the dev extra)")
    return result


# Scheduling. pytest-xdist hands out its work units (a group of the module-scoped fixture's users, or one test) in
# collection order, each to the next worker that runs low, so a long unit that comes late makes one worker finish
# long after the other. The longest units therefore go first (longest first is within 4/3 of the best split).
# Seconds as measured with --durations on 2 cores (setup included; 2026-12-07, after the tools' tests moved to
# narrow runs); only their order matters, and a unit not listed goes after these.
LONG_UNITS = {
    "tests.test_loop": 340,
    "tests.test_export": 180,
    "tests.test_checkpoints": 180,
    "tests/test_distribute.py::test_a_worker_killed_with_sigkill_then_both_restarted_resume_and_write_one_run": 120,
    "tests/test_checkpoints.py::test_a_background_save_holds_its_steps_state_while_training_goes_on": 110,
    "tests/test_distribute.py::test_two_full_size_workers_write_one_checkpoint_of_the_design": 100,
    "tests/test_loop.py::test_mixed_float16_run_resumes_exactly": 96,
    "tests/test_loop.py::test_two_replicas_of_batch_one_make_the_update_of_one_device_with_batch_two": 83,
    "tests/test_train_script.py::test_sigkill_then_restart_ends_where_the_uninterrupted_run_ends": 80,
    "tests/test_checkpoints.py::test_a_failed_background_write_is_raised_at_the_next_save_and_set_aside": 76,
    "tests/test_checkpoints.py::test_the_state_file_names_a_background_checkpoint_only_once_it_is_written": 75,
    "tests/test_loop.py::test_two_steps_then_a_resume_continues_the_step_and_may_change_only_resumable_flags": 58,
    "tests/test_distribute.py::test_sigterm_on_one_worker_stops_both_at_one_step_with_a_checkpoint": 58,
    "tests/test_checkpoints.py::test_weights_snapshots_hold_the_networks_and_step_and_serve_the_tools": 55,
    "tests/test_training.py::test_one_step_changes_weights": 68,
    "tests/test_loop.py::test_training_paths": 74,
    "tests/test_loop.py::test_mixed_float16_scales_the_loss_and_unscales_the_gradients": 46,
    "tests/test_loop.py::test_cache_dir_trains_on_the_cached_slices": 46,
    "tests/test_loop.py::test_divergence_stops_naming_the_step_without_a_checkpoint": 45,
    "tests/test_train_data.py::test_png_8_and_16_bit_folders_with_a_corrupt_file": 39,
}


def unit_of(item) -> str:
    """The key of LONG_UNITS an item counts under: its group, else its test function (all parameters)."""
    return worker_group(item) or item.nodeid.split("[")[0]


def worker_group(item) -> str | None:
    definitions = item._fixtureinfo.name2fixturedefs.values()
    if any(definition[-1].scope == "module" for definition in definitions):
        return item.module.__name__
    return None
