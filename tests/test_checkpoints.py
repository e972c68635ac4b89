"""Damaged checkpoints, full disks and weights-only snapshots (issue 13), on the narrow networks of test_loop.

A base run saves steps 1, 2 and 3; each test copies it and damages ckpt-3 one way. The restore must set ckpt-3
aside and hold ckpt-2's state; once, through the loop, the resumed run must end where the undamaged one ended.
"""

import os
import shutil
import threading

import numpy as np
import pytest
import tensorflow as tf

from models import inference
from rundir import checkpoints as rundir_checkpoints
from tests.test_loop import FILTERS, checkpoint_state, differing, saved_steps, train
from training import checkpoints, loop
from training.config import ModelConfig
from training.cyclegan import NETWORKS, CycleGAN

BASE = dict(epochs=1, save_every_steps=1)


@pytest.fixture(autouse=True)
def float32_policy_after():
    yield
    tf.keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("base")
    assert train(logdir, **BASE) == 3
    assert saved_steps(logdir) == [1, 2, 3]
    return logdir


def copy_run(base_run, target):
    shutil.copytree(base_run, target)
    return target


def ckpt(logdir, step):
    return os.path.join(logdir, "checkpoints", f"ckpt-{step}")


def data_file(logdir, step):
    return ckpt(logdir, step) + ".data-00000-of-00001"


def rewrite_ckpt_3(logdir, model: CycleGAN, change=lambda checkpoint: None):
    """Saves `model`'s state (after `change`) as ckpt-3, as the trainer of another run would have."""
    checkpoint = model.checkpoint()
    change(checkpoint)
    for name in rundir_checkpoints.checkpoint_files(ckpt(logdir, 3)):
        os.remove(name)
    tf.train.CheckpointManager(checkpoint, str(logdir / "checkpoints"), max_to_keep=10).save(checkpoint_number=3)


def narrow(precision="float32", pool_size=50) -> CycleGAN:
    tf.keras.mixed_precision.set_global_policy(precision)
    return CycleGAN(ModelConfig(precision=precision, pool_size=pool_size, filters=FILTERS), 3, 3)


def truncate(logdir):
    with open(data_file(logdir, 3), "r+b") as f:
        f.truncate(os.path.getsize(data_file(logdir, 3)) // 2)


def flip_bytes(logdir):
    with open(data_file(logdir, 3), "r+b") as f:
        f.seek(1000)
        chunk = f.read(64)
        f.seek(1000)
        f.write(bytes(b ^ 0xFF for b in chunk))


def unreadable_index(logdir):
    with open(ckpt(logdir, 3) + ".index", "wb") as f:
        f.write(b"\0not an index" * 100)


def nan_weights(logdir):
    model = narrow()
    model.checkpoint().restore(ckpt(logdir, 3)).assert_existing_objects_matched()
    weight = model.generator_g.weights[0]
    weight.assign(tf.fill(weight.shape, float("nan")))
    rewrite_ckpt_3(logdir, model)


def extra_variable(logdir):
    model = narrow()
    model.checkpoint().restore(ckpt(logdir, 3)).assert_existing_objects_matched()
    rewrite_ckpt_3(logdir, model, lambda checkpoint: setattr(checkpoint, "extra", tf.Variable(1.0)))


DAMAGES = {
    "truncated data": (truncate, "ckpt-3.data-00000-of-00001 holds"),
    "bytes appended": (lambda logdir: open(data_file(logdir, 3), "ab").write(b"\0" * 10),
                       "ckpt-3.data-00000-of-00001 holds 31,"),
    "deleted index": (lambda logdir: os.remove(ckpt(logdir, 3) + ".index"), "ckpt-3.index is missing"),
    "missing shard": (lambda logdir: os.remove(data_file(logdir, 3)), "ckpt-3.data-00000-of-00001 is missing"),
    "unreadable index": (unreadable_index, "ckpt-3.index is unreadable"),
    "flipped bytes": (flip_bytes, "does not restore into this model"),
    "non-finite weights": (nan_weights, "non-finite weights in generator_g"),
    "other pool size": (lambda logdir: rewrite_ckpt_3(logdir, narrow(pool_size=3)), "does not restore"),
    "other precision": (lambda logdir: rewrite_ckpt_3(logdir, narrow("mixed_float16")), "does not restore"),
    "extra variable": (extra_variable, "does not restore"),
}


def restored_state(model: CycleGAN, logdir) -> dict[str, np.ndarray]:
    """Every tensor of `model`'s state, saved into `logdir` and read back as checkpoint_state reads a run's."""
    tf.train.CheckpointManager(model.checkpoint(), os.path.join(logdir, "checkpoints"), max_to_keep=1).save()
    return checkpoint_state(logdir)


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_restored(
        base_run, tmp_path, absl_warnings, damage):
    logdir = copy_run(base_run, tmp_path / "run")
    damage_fn, reason = DAMAGES[damage]
    damage_fn(logdir)
    model = narrow()
    assert checkpoints.Checkpointer(model, str(logdir), max_to_keep=10).restore_latest() == ckpt(logdir, 2)
    warnings = [w for w in absl_warnings() if "damaged checkpoint" in w]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("damaged checkpoint ckpt-3: ") and reason in warnings[0], warnings[0]
    set_aside = sorted(f for f in os.listdir(logdir / "checkpoints") if f.endswith(".corrupt"))
    assert set_aside and all(f.startswith("ckpt-3.") for f in set_aside)  # renamed, not deleted
    assert saved_steps(logdir) == [1, 2]
    # Every variable holds ckpt-2's value: nothing of the failed attempt on ckpt-3 leaked into the model.
    restored, reference = restored_state(model, tmp_path / "restored"), checkpoint_state(base_run, 2)
    assert sorted(restored) == sorted(reference)
    assert differing(restored, reference) == {}


@pytest.mark.slow
def test_the_run_continues_from_the_previous_checkpoint_to_the_undamaged_runs_state(base_run, tmp_path):
    """The whole path once, through the loop (the ten kinds above differ only before the restore)."""
    logdir = copy_run(base_run, tmp_path / "run")
    truncate(logdir)
    assert train(logdir, **BASE) == 3
    assert saved_steps(logdir) == [1, 2, 3]
    resumed, reference = checkpoint_state(logdir, 3), checkpoint_state(base_run, 3)
    assert sorted(resumed) == sorted(reference)
    assert differing(resumed, reference) == {}  # to test_loop's resume tolerance (a rare last-bits difference)


@pytest.mark.slow
def test_when_no_checkpoint_is_usable_the_run_stops_in_one_line(base_run, tmp_path):
    logdir = copy_run(base_run, tmp_path / "run")
    for step in (1, 2, 3):
        os.remove(ckpt(logdir, step) + ".index")
    for attempt in range(2):  # and it does not quietly start over the next time
        with pytest.raises(loop.TrainingError, match="no usable checkpoint in .*every one is damaged") as error:
            train(logdir, **BASE)
        assert "\n" not in str(error.value)
    assert len([f for f in os.listdir(logdir / "checkpoints") if f.endswith(".corrupt")]) == 3


def test_set_aside_drops_the_checkpoint_from_the_state_file(base_run, tmp_path):
    logdir = copy_run(base_run, tmp_path / "run")
    moved = rundir_checkpoints.set_aside(ckpt(logdir, 3))
    assert sorted(os.path.basename(m) for m in moved) == ["ckpt-3.data-00000-of-00001.corrupt", "ckpt-3.index.corrupt"]
    assert saved_steps(logdir) == [1, 2]
    assert tf.train.latest_checkpoint(str(logdir / "checkpoints")).endswith("ckpt-2")
    assert rundir_checkpoints.checkpoints_newest_first(str(logdir / "checkpoints")) == [ckpt(logdir, 2),
                                                                                       ckpt(logdir, 1)]


def test_an_intact_checkpoint_passes_the_file_checks(base_run):
    assert [rundir_checkpoints.damage(ckpt(base_run, step)) for step in (1, 2, 3)] == [None, None, None]


# ---------------------------------------------------------------- free space and verification


def fake_free_space(monkeypatch, free: int):
    usage = shutil.disk_usage

    def disk_usage(path):
        return usage(path)._replace(free=free)

    monkeypatch.setattr(checkpoints.shutil, "disk_usage", disk_usage)


@pytest.mark.slow
def test_a_save_that_would_not_fit_stops_with_both_numbers_and_the_previous_checkpoint_intact(
        base_run, tmp_path, monkeypatch):
    logdir = copy_run(base_run, tmp_path / "run")
    size = checkpoints.files_size(ckpt(logdir, 3))
    before = checkpoint_state(logdir, 3)
    fake_free_space(monkeypatch, size - 1)
    with pytest.raises(loop.TrainingError) as error:
        train(logdir, epochs=2, save_every_steps=1)  # step 4 needs ckpt-3's size
    message = str(error.value)
    assert f"{size - 1:,} bytes free, {size:,} needed" in message and "ckpt-3 is intact" in message, message
    assert saved_steps(logdir) == [1, 2, 3] and not os.path.exists(ckpt(logdir, 4) + ".index")
    assert rundir_checkpoints.damage(ckpt(logdir, 3)) is None
    after = checkpoint_state(logdir, 3)
    assert all(np.array_equal(before[name], after[name]) for name in before)


@pytest.mark.slow
def test_the_first_save_is_checked_against_the_variables_size(base_run, tmp_path, monkeypatch):
    fake_free_space(monkeypatch, 1000)
    with pytest.raises(loop.TrainingError, match=r"1,000 bytes free, [\d,]+ needed$") as error:
        train(tmp_path, **BASE)
    needed = int(str(error.value).rsplit(" ", 2)[-2].replace(",", ""))
    # The estimate is the variables' bytes: within 1 % of the first checkpoint the same run writes with room.
    assert needed == pytest.approx(checkpoints.files_size(ckpt(base_run, 1)), rel=0.01)
    assert not os.path.exists(tmp_path / "checkpoints" / "checkpoint")


@pytest.mark.slow
def test_a_bad_write_is_found_at_once(tmp_path, monkeypatch):
    save = tf.train.CheckpointManager.save

    def save_then_lose_bytes(manager, checkpoint_number=None):
        path = save(manager, checkpoint_number=checkpoint_number)
        with open(path + ".data-00000-of-00001", "r+b") as f:
            f.truncate(1000)
        return path

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save_then_lose_bytes)
    with pytest.raises(loop.TrainingError, match=r"ckpt-1 is not whole after writing \(.*ckpt-1.data-00000-of-00001 "
                                                 r"holds 1,000 bytes, fewer than its index lists"):
        train(tmp_path, **BASE)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["ckpt-1.data-00000-of-00001.corrupt",
                                                            "ckpt-1.index.corrupt"]


def test_verification_compares_shapes_with_the_model(tmp_path):
    written = tf.train.Checkpoint(v=tf.Variable(tf.zeros([2, 3])), w=tf.Variable(1.0))
    path = written.write(str(tmp_path / "ckpt-1"))
    assert checkpoints.mismatch(path, written) is None
    other = tf.train.Checkpoint(v=tf.Variable(tf.zeros([3, 2])), w=tf.Variable(1.0))
    assert checkpoints.mismatch(path, other) == "v/.ATTRIBUTES/VARIABLE_VALUE has shape [2, 3], the model [3, 2]"


# ---------------------------------------------------------------- background saves

def one_step(model: CycleGAN, seed: int) -> None:
    images = tf.random.stateless_uniform((2, 1, 256, 256, 1), (seed, 0), -1.0, 1.0)
    model.train_step(images[0], images[1])


def held_writes(checkpointer: checkpoints.Checkpointer, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Makes `checkpointer`'s next writes wait: (started, proceed) events around the write to disk."""
    started, proceed = threading.Event(), threading.Event()
    write = checkpointer.written._write

    def held_write(*args, **kwargs):
        started.set()
        assert proceed.wait(timeout=60)
        return write(*args, **kwargs)

    monkeypatch.setattr(checkpointer.written, "_write", held_write)
    return started, proceed


def test_a_background_save_holds_its_steps_state_while_training_goes_on(tmp_path, monkeypatch):
    model = narrow(pool_size=2)
    one_step(model, 1)
    checkpoints.Checkpointer(model, str(tmp_path / "waited")).save()
    background = checkpoints.Checkpointer(model, str(tmp_path / "background"), background=True)
    started, proceed = held_writes(background, monkeypatch)
    assert background.save() == ckpt(tmp_path / "background", 1)
    assert started.wait(timeout=60)
    one_step(model, 2)  # changes every weight, moment and pool image before the write starts
    proceed.set()
    background.finish()
    waited, written = checkpoint_state(tmp_path / "waited"), checkpoint_state(tmp_path / "background")
    assert sorted(written) == sorted(waited) and len(written) > 300
    assert [name for name in waited if not np.array_equal(waited[name], written[name])] == []  # bit for bit
    resumed = narrow(pool_size=2)
    assert checkpoints.Checkpointer(resumed, str(tmp_path / "background")).restore_latest() is not None
    assert resumed.current_step == 1


def test_the_state_file_names_a_background_checkpoint_only_once_it_is_written(tmp_path, monkeypatch):
    """With one checkpoint kept, a kill -9 during a background write must still find the previous one."""
    model = narrow(pool_size=2)
    one_step(model, 1)
    checkpointer = checkpoints.Checkpointer(model, str(tmp_path), max_to_keep=1, background=True)
    checkpointer.save()
    checkpointer.finish()
    one_step(model, 2)
    started, proceed = held_writes(checkpointer, monkeypatch)
    checkpointer.save()
    assert started.wait(timeout=60)
    assert tf.train.latest_checkpoint(tmp_path / "checkpoints") == ckpt(tmp_path, 1)
    assert rundir_checkpoints.damage(ckpt(tmp_path, 1)) is None
    proceed.set()
    checkpointer.finish()
    assert tf.train.latest_checkpoint(tmp_path / "checkpoints") == ckpt(tmp_path, 2)
    assert saved_steps(tmp_path) == [2]


def test_a_failed_background_write_is_raised_at_the_next_save_and_set_aside(tmp_path, monkeypatch):
    model = narrow(pool_size=2)
    one_step(model, 1)
    checkpointer = checkpoints.Checkpointer(model, str(tmp_path), background=True)
    monkeypatch.setattr(checkpoints, "damage", lambda path: f"{os.path.basename(path)}.index is unreadable")
    checkpointer.save()  # returns while the write runs
    one_step(model, 2)
    with pytest.raises(checkpoints.CheckpointError, match=r"^checkpoint .*ckpt-1 is not whole after writing "
                                                          r"\(ckpt-1.index is unreadable\); set aside"):
        checkpointer.save()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["ckpt-1.data-00000-of-00001.corrupt",
                                                            "ckpt-1.index.corrupt"]


# ---------------------------------------------------------------- weights-only snapshots


@pytest.mark.slow
def test_weights_snapshots_hold_the_networks_and_step_and_serve_the_tools(tmp_path):
    train(tmp_path, keep_weights_every_epochs=1)  # two epochs of 3 steps
    snapshots = rundir_checkpoints.checkpoints_newest_first(str(tmp_path / "weights"))
    assert [rundir_checkpoints.checkpoint_step(p) for p in snapshots] == [6, 3]
    names = [name for name, _ in tf.train.list_variables(snapshots[0])]
    assert not [n for n in names if n.startswith(("optimizer_", "pool_", "dropout_states"))]
    assert {n.split("/")[0] for n in names} >= {"step", *NETWORKS}
    full = checkpoint_state(tmp_path, 6)
    snapshot = tf.train.load_checkpoint(snapshots[0])
    assert snapshot.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 6
    # Read as the tools read it: the generators equal those of the full checkpoint of the same step.
    from_snapshot, path, step = inference.checkpoint_networks(str(tmp_path), snapshots[0])
    from_full, _, _ = inference.checkpoint_networks(str(tmp_path), ckpt(tmp_path, 6))
    assert step == 6 and path == snapshots[0]
    for direction in from_full:
        a, b = from_snapshot[direction].get_weights(), from_full[direction].get_weights()
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(full) > len(names)  # the full checkpoint also holds optimizers and pools


# ---------------------------------------------------------------- the tools


def test_tools_name_the_damaged_checkpoint_and_the_newest_intact_one(base_run, tmp_path):
    logdir = copy_run(base_run, tmp_path / "run")
    truncate(logdir)
    with pytest.raises(ValueError) as error:
        inference.checkpoint_networks(str(logdir))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{ckpt(logdir, 3)}: unreadable checkpoint ({data_file(logdir, 3)} holds"), message
    assert message.endswith(f"the newest intact one is {ckpt(logdir, 2)}: pass --checkpoint={ckpt(logdir, 2)} "
                            "to use it"), message
    assert os.path.exists(data_file(logdir, 3))  # the tools only read: nothing is set aside
    _, path, step = inference.checkpoint_networks(str(logdir), ckpt(logdir, 2) + ".index")
    assert (path, step) == (ckpt(logdir, 2), 2)
    with pytest.raises(ValueError, match="no intact checkpoint in"):
        for step in (1, 2):
            os.remove(ckpt(logdir, step) + ".index")
        inference.checkpoint_networks(str(logdir))


def test_tools_build_the_width_the_run_saved(base_run, tmp_path):
    """The run's flags say --filters=4: the tools restore narrow generators, from its logdir or from one of its
    checkpoints given beside another logdir; a width that is not a number is a one-line error."""
    narrow_count = CycleGAN(ModelConfig(pool_size=0, filters=FILTERS), 3, 3).generator_g.count_params()
    networks, _, _ = inference.checkpoint_networks(str(base_run))
    assert {network.count_params() for network in networks.values()} == {narrow_count}
    networks, _, step = inference.checkpoint_networks(str(tmp_path), ckpt(base_run, 2))
    assert step == 2 and networks["t1_to_t2"].count_params() == narrow_count
    logdir = copy_run(base_run, tmp_path / "run")
    flags = (logdir / "flags.txt").read_text().replace(f"--filters={FILTERS}\n", "--filters=wide\n")
    (logdir / "flags.txt").write_text(flags)
    with pytest.raises(ValueError, match=r"flags.txt has --filters=wide, not a width$"):
        inference.checkpoint_networks(str(logdir))


def test_no_checkpoint_names_the_runs_in_subfolders(base_run, tmp_path):
    copy_run(base_run, tmp_path / "runs" / "quick")
    copy_run(base_run, tmp_path / "runs" / "group" / "long")
    rundir_checkpoints.set_aside(ckpt(tmp_path / "runs" / "group" / "long", 3))
    (tmp_path / "runs" / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as error:
        rundir_checkpoints.latest_checkpoint(str(tmp_path / "runs"))
    runs = tmp_path / "runs"
    assert str(error.value) == (f"no checkpoint in {runs / 'checkpoints'}; runs in its subfolders: "
                                f"{runs / 'group' / 'long'} (step 2), {runs / 'quick'} (step 3); pass one as "
                                f"--logdir, e.g. --logdir={runs / 'group' / 'long'}")


@pytest.mark.slow
def test_a_checkpoint_of_the_previous_version_resumes(base_run, tmp_path):
    """Before the pools' draws were keyed by (seed, step), each pool saved a random generator's state: such a
    checkpoint is not damaged, it restores (that state unused) and the run continues from it."""
    logdir = copy_run(base_run, tmp_path / "run")
    model = narrow()
    model.checkpoint().restore(ckpt(logdir, 3)).assert_existing_objects_matched()
    model.pool_a.rng = tf.random.Generator.from_seed(0)  # what ImagePool held then
    model.pool_b.rng = tf.random.Generator.from_seed(1)
    rewrite_ckpt_3(logdir, model)
    assert any(name.startswith("pool_a/rng/") for name, _ in tf.train.list_variables(ckpt(logdir, 3)))
    assert train(logdir, **{**BASE, "epochs": 2}) == 6
    assert saved_steps(logdir)[-1] == 6 and not any(name.endswith(".corrupt") for name in
                                                    os.listdir(logdir / "checkpoints"))
