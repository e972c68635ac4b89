"""Shared test helpers: running the entry scripts and reading what they wrote."""

import glob
import copy
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import tensorflow as tf
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERMUTED_LPS = np.array([[0, -0.9, 0, 30], [-1.1, 0, 0, 20], [0, 0, 2.5, -10], [0, 0, 0, 1]])  # oblique-free, axes swapped
# The same architecture at a sixteenth of its width, for tests not about the full-size model (train.py --filters).
NARROW_FILTERS = 4
NARROW = [f"--filters={NARROW_FILTERS}"]
# Small and fast: few phantom subjects, one summary sample.
QUICK = ["--synthetic_subjects=6", "--synthetic_test_subjects=2", "--summary_images=1", "--log_every_steps=1",
         "--keep_checkpoints=1"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(runner: str, logdir, *flags: str, log_dir) -> list[subprocess.Popen]:
    """Two processes of `runner` (a training script) as the workers of one MultiWorkerMirroredStrategy run, with
    TF_CONFIG naming two loopback ports; each one's output goes to a log file in `log_dir`."""
    ports = free_ports(2)
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                  "task": {"type": "worker", "index": index}}
        log = open(os.path.join(log_dir, f"worker{index}-{time.monotonic_ns()}.log"), "w")
        processes.append(subprocess.Popen([sys.executable, runner, f"--logdir={logdir}", *flags], cwd=ROOT,
                                          env={**os.environ, "TF_CONFIG": json.dumps(config)}, stdout=log,
                                          stderr=subprocess.STDOUT, text=True))
        processes[-1].log_path = log.name
    return processes


def finish_workers(processes: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """Each worker's exit code and output; kills them all when one outlives the timeout."""
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [(process.returncode, open(process.log_path).read()) for process in processes]


def script(name: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Runs an entry script of the repository the way a user would; output is captured."""
    kwargs.setdefault("timeout", 600)
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *args], capture_output=True, text=True,
                          cwd=ROOT, **kwargs)


def checkpoint_step(logdir: str) -> int:
    path = tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))
    assert path is not None, f"no checkpoint in {logdir}"
    return int(tf.train.load_checkpoint(path).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def checkpoint_weight_count(logdir: str) -> dict[str, int]:
    """Parameters per network, read from the raw checkpoint file (not from any model we build).

    With its optimizer in the same checkpoint, a Keras 3 model's weights are
    stored under the optimizer's `_trainable_variables` path.
    """
    path = tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))
    counts: dict[str, int] = {}
    for name, shape in tf.train.list_variables(path):
        match = re.fullmatch(r"optimizer_(\w+)/_trainable_variables/\d+/\.ATTRIBUTES/VARIABLE_VALUE", name)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + int(np.prod(shape))
    return counts


def summaries(logdir: str) -> dict[str, dict[int, object]]:
    """Every summary in a logdir's event files: tag -> {step: scalar value, or 'image'/'text'}."""
    out: dict[str, dict[int, object]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "scalars":
                    item = float(tf.make_ndarray(value.tensor))
                else:
                    item = plugin
                out.setdefault(value.tag, {})[event.step] = item
    return out


def write_dicom(path: Path, stored: np.ndarray, series_uid: str, instance: int, position=None,
                orientation=(1, 0, 0, 0, 1, 0), slope=None, intercept=None,
                photometric="MONOCHROME2", with_pixels=True) -> Path:
    """A minimal MR DICOM file (with 'DICM' preamble) holding uint16 `stored` pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "MR", "P001"
    ds.SeriesInstanceUID, ds.InstanceNumber = series_uid, instance
    if position is not None:
        ds.ImagePositionPatient, ds.ImageOrientationPatient = list(position), list(orientation)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if with_pixels:
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = stored.astype(np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return path


def write_mr_series(folder: Path, stored: np.ndarray, photometric: str = "MONOCHROME2") -> list[Path]:
    """A series made from pydicom's MR_small.dcm (a real scanner header): one file per slice, 0.8 mm apart."""
    template = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    template.SeriesInstanceUID, template.ImageType = generate_uid(), ["ORIGINAL", "PRIMARY", "M"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, pixels in enumerate(stored):
        dataset = copy.deepcopy(template)
        dataset.set_pixel_data(pixels.astype(np.uint16), photometric, 16)
        dataset.InstanceNumber = k + 1
        dataset.ImagePositionPatient = [-83.9063, -91.2, round(6.6406 + 0.8 * k, 4)]  # a valid DS: 16 characters at most
        paths.append(folder / f"IM{k:04d}")  # extension-less, as scanners export them
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths
