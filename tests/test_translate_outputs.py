"""translate.py's output paths (issue 13): a folder that is a file, read-only, inside the input folder, or an
output over its input (refused unless --overwrite). Each is refused in one line before the model is loaded."""

import contextlib
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from data import readers
from models import translation
from tests.helpers import script, write_png


@pytest.fixture
def inputs(tmp_path):
    """A folder of two 16-bit-able PNG slices with a bright ellipse (above --min_foreground)."""
    x, y = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij")
    head = ((x**2 + y**2 < 0.6) * 200).astype(np.uint8)
    for name in ("a.png", "b.png"):
        write_png(tmp_path / "in" / name, head)
    return tmp_path / "in"


def paths(input_spec, output, overwrite=False, output_format="input"):
    volumes = readers.read_path(str(input_spec))
    return translation.output_paths(volumes, str(input_spec), str(output), overwrite, output_format)


@contextlib.contextmanager
def read_only(folder):
    """`folder` unwritable even for root (which ignores permission bits): chmod, and chattr +i as root."""
    os.chmod(folder, 0o555)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        os.chmod(folder, 0o755)


def test_an_output_folder_that_is_a_file_is_refused(inputs, tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("a file")
    with pytest.raises(ValueError, match=f"^--output={blocker} is a file, not a folder$"):
        paths(inputs, blocker)
    under = blocker / "sub"
    targets = [str(under / "a.png")]
    with pytest.raises(ValueError, match=f"^--output={under}: {blocker} is a file, not a folder$"):
        translation.check_writable(str(under), targets)


def test_a_read_only_output_folder_is_refused(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    targets = paths(inputs, out)
    translation.check_writable(str(out), targets)  # writable: accepted
    with read_only(out):
        with pytest.raises(ValueError, match=f"^--output={out}: cannot write in {out} \\("):
            translation.check_writable(str(out), targets)
        # A folder still to be created, below a read-only one.
        deeper = out / "new" / "deeper"
        with pytest.raises(ValueError, match=f"^--output={deeper}: cannot write in {out} \\("):
            translation.check_writable(str(deeper), paths(inputs, deeper))


def test_an_output_folder_inside_the_input_folder_is_refused(inputs):
    for inside in (inputs / "translated", inputs / "a" / "b"):
        with pytest.raises(ValueError, match=f"^--output={inside} is inside --input={inputs}, which is searched "
                                             "recursively"):
            paths(inputs, inside)
    assert paths(inputs, inputs.parent / "out") == [str(inputs.parent / "out" / "a.png"),
                                                    str(inputs.parent / "out" / "b.png")]


def test_an_output_over_its_input_needs_overwrite(inputs):
    with pytest.raises(ValueError, match="a.png: the output would overwrite this input; choose another --output, "
                                         "or pass --overwrite to replace it"):
        paths(inputs, inputs)
    single = inputs / "a.png"
    with pytest.raises(ValueError, match="would overwrite this input"):
        paths(single, single)
    assert paths(single, single, overwrite=True) == [str(single)]
    assert paths(inputs, inputs, overwrite=True) == [str(inputs / "a.png"), str(inputs / "b.png")]


def test_overwrite_writes_the_translation_over_the_input(inputs, monkeypatch):
    single = inputs / "a.png"
    before = single.read_bytes()
    monkeypatch.setattr(translation, "load_generator", lambda *args: lambda batch: -batch)  # inverts the contrast
    assert translation.translate("t1_to_t2", str(single), str(single), None, "unused", "skip", 0.05, 8,
                                 overwrite=True) == 1
    assert single.read_bytes() != before and Image.open(single).mode.startswith("I")  # now the 16-bit translation


def test_refusals_are_one_line_errors_from_translate_py(inputs, tmp_path):
    """No model is needed: the output is checked before the checkpoint is looked for."""
    for output, message in ((inputs / "sub", "is inside --input="), (inputs, "pass --overwrite")):
        result = script("translate.py", "--direction=t1_to_t2", f"--input={inputs}", f"--output={output}",
                        f"--logdir={tmp_path / 'no_run'}")
        assert result.returncode != 0 and "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, last
        assert not (inputs / "sub").exists()


def test_the_time_split_puts_the_network_call_under_network(inputs, tmp_path, monkeypatch, caplog):
    """A stand-in generator that takes 0.3 s per call: its time is counted as network, not preprocessing."""
    import time

    def slow_generator(batch):
        time.sleep(0.3)
        return -batch

    caplog.set_level("INFO", logger="absl")
    monkeypatch.setattr(translation, "load_generator", lambda *args: slow_generator)
    assert translation.translate("t1_to_t2", str(inputs), str(tmp_path / "out"), None, "unused", "skip", 0.05,
                                 1) == 2
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("time: ")]
    assert len(lines) == 1
    parts = dict(part.rsplit(" ", 2)[:2] for part in lines[0][len("time: "):].split(", "))
    assert list(parts) == list(translation.TIMED_PARTS)
    seconds = {part: float(value) for part, value in parts.items()}
    assert 0.6 <= seconds["network"] < 0.6 + 1.0  # two slices, batch 1: two calls
    assert seconds["preprocessing"] < 0.3  # no sleep leaked into it


def test_dicom_output_goes_to_a_folder_per_nifti_and_never_to_a_file_name(tmp_path, write_nifti):
    """--output_format=dicom: a NIfTI's series is the folder <stem>/; a --output file name is refused."""
    source = write_nifti(tmp_path / "in" / "sub-01_T1w.nii.gz", np.ones((4, 4, 2), np.float32))
    assert paths(source, tmp_path / "out", output_format="dicom") == [str(tmp_path / "out" / "sub-01_T1w")]
    with pytest.raises(ValueError, match="names a file, but --output_format=dicom writes series"):
        paths(source, tmp_path / "out.nii.gz", output_format="dicom")
