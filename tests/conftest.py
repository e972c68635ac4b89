"""Shared fixtures: the real MRI folder next to the repository, NIfTI writing and absl warnings."""

import inspect
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import QUICK, script

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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> str:
    """The logdir of a one-step training run on the built-in data, shared by tests that only read it."""
    logdir = str(tmp_path_factory.mktemp("trained_run"))
    # Written by MirroredStrategy over two CPU devices, so every tool is tested on a distributed run's checkpoint.
    result = script("train.py", "--epochs=1", "--steps_per_epoch=1", f"--logdir={logdir}", "--strategy=mirrored",
                    "--cpu_replicas=2", "--batch_size=2", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir


# Fixtures that train or start processes: a test using one belongs to the slow tier.
SLOW_FIXTURES = {"trained_run", "standin_run", "standin_model", "exported", "references", "run_with_data_dir"}


def pytest_collection_modifyitems(items):
    """Marks `slow` every test that starts a process (script, Popen) or uses a fixture that does, so that
    `pytest -m "not slow"` is the quick development loop; the README's command still runs everything."""
    for item in items:
        source = inspect.getsource(item.function)
        if SLOW_FIXTURES & set(item.fixturenames) or "script(" in source or "Popen(" in source:
            item.add_marker(pytest.mark.slow)
