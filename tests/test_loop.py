"""The training loop's mechanics in-process, on a narrow copy of the networks (filters=4 instead of 64).

Resume, signals, divergence, summaries, schedules, pools, precisions and the flags a resume may change;
tests/test_train_script.py keeps what only a process shows, with the full-size model.
"""

import os
import signal
import types

import numpy as np
import pytest
import tensorflow as tf

from rundir import flagfile
from tests.helpers import NARROW_FILTERS, summaries
from training import loop
from training.config import ModelConfig, TrainConfig
from training.cyclegan import NETWORKS, CycleGAN

FILTERS = NARROW_FILTERS
# Two 3-step epochs; the decay starts after epoch 1, so a run extended from 1 to 2 epochs keeps its curve.
TINY = dict(filters=FILTERS, epochs=2, steps_per_epoch=3, decay_epoch=1, synthetic_subjects=6, synthetic_test_subjects=2,
            summary_images=1, log_every_steps=1, keep_checkpoints=10, deterministic=True)


def tiny_config(**flags) -> TrainConfig:
    return TrainConfig.from_values({**TINY, **flags})


def train(logdir, **flags) -> int:
    return loop.train(tiny_config(**flags), str(logdir))


def checkpoint_state(logdir, step=None) -> dict[str, np.ndarray]:
    """Every tensor of the newest (or the given step's) checkpoint but the manager's count of saves."""
    directory = os.path.join(logdir, "checkpoints")
    path = os.path.join(directory, f"ckpt-{step}") if step is not None else tf.train.latest_checkpoint(directory)
    reader = tf.train.load_checkpoint(path)
    return {name: np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()
            if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


# Within one process a resume reproduces the uninterrupted run; usually bit for bit, but now and then one of the
# ~400 tensors differs in its last bits (multi-threaded CPU kernels may add in another order). A resume that
# replays other data, dropout masks or pool draws changes pools and moments by 1e-2 to 1 of their size.
RESUME_RTOL = 1e-4


def differing(state: dict, reference: dict) -> dict[str, float]:
    """Tensors that differ: integers at all, floats by more than RESUME_RTOL of the tensor's largest value."""
    out = {}
    for name, want in reference.items():
        got = state[name]
        if not np.issubdtype(want.dtype, np.floating):
            if not np.array_equal(got, want):
                out[name] = float("inf")
            continue
        error = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
        if error > RESUME_RTOL * float(np.abs(want).max()):
            out[name] = error
    return out


def saved_steps(logdir) -> list[int]:
    state = tf.train.get_checkpoint_state(os.path.join(logdir, "checkpoints"))
    return [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths]


def save_count(logdir) -> int:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")))
    return int(reader.get_tensor("save_counter/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.fixture(autouse=True)
def float32_policy_after():
    """Each run sets the process-wide precision policy; leave float32 behind for the next test."""
    yield
    tf.keras.mixed_precision.set_global_policy("float32")


def stop_with_sigterm_after(monkeypatch, stop_step: int):
    """Sends this process SIGTERM right after step `stop_step`, as `kill` would."""
    check = loop.check_finite

    def check_then_signal(step, step_losses):
        check(step, step_losses)
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "check_finite", check_then_signal)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run of TINY's 6 steps. It also asks for a save every 3 steps and a profile of steps 2-3, which
    change none of its state, so that the tests of those flags read it instead of training runs of their own."""
    logdir = tmp_path_factory.mktemp("uninterrupted")
    assert train(logdir, save_every_steps=3, profile_steps="2,3") == 6
    return logdir


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch,
                                                                                  uninterrupted):
    """Stopped after step 4 (mid epoch 2), resumed by the same call: the uninterrupted state (see RESUME_RTOL), so
    data order, augmentation, dropout masks, pool draws, optimizer moments and schedule all continued."""
    stop_with_sigterm_after(monkeypatch, 4)
    with pytest.raises(loop.Stopped, match="SIGTERM at step 4; saved") as stopped:
        train(tmp_path)
    assert stopped.value.exit_code == 143
    assert saved_steps(tmp_path) == [3, 4]
    monkeypatch.undo()
    assert train(tmp_path) == 6
    resumed, reference = checkpoint_state(tmp_path), checkpoint_state(uninterrupted)
    assert sorted(resumed) == sorted(reference)
    assert differing(resumed, reference) == {}
    # The comparison has something to find: training moved every network away from its state at step 3.
    early = checkpoint_state(uninterrupted, 3)
    moved = [name for name in reference if "/_trainable_variables/" in name
             and not np.array_equal(early[name], reference[name])]
    assert len(moved) == len([name for name in reference if "/_trainable_variables/" in name])


def test_a_signal_landing_while_the_workers_agree_stops_every_worker_at_the_next_step(monkeypatch):
    """Two multi_worker workers; worker 1's SIGTERM handler runs while the step-2 agreement is under way (as
    it does when the signal arrives during the collective). Both must decide alike at every step: stopping
    only worker 1 left worker 0 in a different collective ("expected data_type 9 but got 3")."""
    stops = [loop.StopRequest(), loop.StopRequest()]
    sent = {}  # agreement number -> worker 1's flag (worker 1 asks first each step)

    def any_worker_of(worker):
        def any_worker(_strategy):
            asked = iter(range(100))

            def agree(flag):
                number = next(asked)
                if worker == 1:
                    sent[number] = flag
                    if number == 1:
                        stops[1].signal = "SIGTERM"  # the handler runs as the collective returns
                    return flag  # worker 0 is never signalled
                return flag or sent[number]
            return agree
        return any_worker

    monkeypatch.setattr(loop.distribute, "is_multi_worker", lambda strategy: True)
    ask = {}
    for worker in (0, 1):
        monkeypatch.setattr(loop.distribute, "any_worker", any_worker_of(worker))
        ask[worker] = loop.stop_signal(types.SimpleNamespace(strategy=None), stops[worker])
    decisions = [(ask[1](), ask[0]()) for _ in range(3)]
    assert decisions == [(None, None), (None, None), ("SIGTERM", "SIGTERM")]


@pytest.mark.slow
def test_summaries_each_logged_step_and_images_each_epoch(uninterrupted):
    tags = summaries(str(uninterrupted))
    for name in ("g/adversarial", "f/adversarial", "cycle/a_to_b_to_a", "cycle/b_to_a_to_b", "g/identity",
                 "f/identity", "generators/total", "d_x/total", "d_y/total"):
        assert set(tags[f"loss/{name}"]) == {1, 2, 3, 4, 5, 6}
        assert all(np.isfinite(list(tags[f"loss/{name}"].values())))
    # The rate the step used: 2e-4 through epoch 1, then linear from step 3 to 0 at step 6.
    lr = tags["learning_rate"]
    assert [lr[s] for s in range(1, 7)] == pytest.approx([2e-4, 2e-4, 2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3])
    assert tags["t1_to_t2"] == {3: "images", 6: "images"} and tags["t2_to_t1"] == {3: "images", 6: "images"}
    assert tags["flags"] == {0: "text"} and tags["parameters"] == {0: "text"}


@pytest.mark.slow
def test_generator_total_is_the_sum_of_its_terms(uninterrupted):
    tags = summaries(str(uninterrupted))
    terms = ("g/adversarial", "f/adversarial", "cycle/a_to_b_to_a", "cycle/b_to_a_to_b", "g/identity", "f/identity")
    for step in range(1, 7):
        total = sum(tags[f"loss/{name}"][step] for name in terms)
        assert tags["loss/generators/total"][step] == pytest.approx(total, rel=1e-6)


@pytest.mark.slow
def test_save_every_steps_that_divides_the_epoch_saves_each_step_once(uninterrupted):
    assert saved_steps(uninterrupted) == [3, 6]
    assert save_count(uninterrupted) == 2  # not 4: the epoch-end save of a step just saved is skipped


@pytest.mark.slow
def test_two_steps_then_a_resume_continues_the_step_and_may_change_only_resumable_flags(tmp_path):
    assert train(tmp_path, epochs=1, steps_per_epoch=2) == 2
    assert saved_steps(tmp_path) == [2]
    saved = (tmp_path / "flags.txt").read_text()
    for flags, named in (({"precision": "mixed_bfloat16"}, "--precision=float32 (now mixed_bfloat16)"),
                         ({"pool_size": 3}, "--pool_size=50 (now 3)"),
                         ({"synthetic_seed": 7}, "--synthetic_seed=0 (now 7)"),
                         ({"lr": 1e-3}, "--lr=0.0002 (now 0.001)"),
                         ({"augment_rotate": 5.0}, "--augment_rotate=0.0 (now 5.0)")):
        with pytest.raises(loop.TrainingError, match="cannot resume with other values") as refused:
            train(tmp_path, epochs=2, steps_per_epoch=2, **flags)
        assert named in str(refused.value) and "\n" not in str(refused.value)
        assert (tmp_path / "flags.txt").read_text() == saved
    assert train(tmp_path, epochs=2, steps_per_epoch=2, log_every_steps=2) == 4
    assert saved_steps(tmp_path) == [2, 4]
    state = checkpoint_state(tmp_path)
    assert state["step/.ATTRIBUTES/VARIABLE_VALUE"] == 4
    for network in NETWORKS:  # every optimizer counted the run's steps
        assert state[f"optimizer_{network}/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 4
    assert flagfile.load(str(tmp_path))["epochs"] == "2" and flagfile.load(str(tmp_path))["log_every_steps"] == "2"
    assert (tmp_path / flagfile.HISTORY).read_text().splitlines() == [
        "from step 2: --epochs=2 (was 1)", "from step 2: --log_every_steps=2 (was 1)"]
    # A finished run started again does nothing.
    assert train(tmp_path, epochs=2, steps_per_epoch=2, log_every_steps=2) == 4
    assert save_count(tmp_path) == 2
    after = checkpoint_state(tmp_path)
    assert all(np.array_equal(state[name], after[name]) for name in state)


# flags.txt as train.py wrote it before the config objects (commit d4bc9b3), for TINY with --epochs=1.
PREVIOUS_FLAGS_TXT = """--augment_bias_field=0.0
--augment_flip=true
--augment_gamma=0.0
--augment_jitter=true
--augment_rotate=0.0
--augment_scale=0.0
--batch_size=1
--beta_1=0.5
--decay_epoch=1
--deterministic=true
--epochs=1
--gan_loss=lsgan
--keep_checkpoints=10
--lambda_cycle=10.0
--lambda_identity=0.5
--log_every_steps=1
--lr=0.0002
--min_foreground=0.05
--on_bad_file=skip
--pool_size=50
--precision=float32
--seed=0
--steps_per_epoch=3
--summary_images=1
--synthetic_seed=0
--synthetic_subjects=6
--synthetic_test_subjects=2
--xla=auto
"""


def test_flags_txt_of_the_previous_format_is_read(tmp_path):
    (tmp_path / "flags.txt").write_text(PREVIOUS_FLAGS_TXT)
    previous = tiny_config(epochs=1, filters=64)  # a run from before --filters had the design's width
    assert TrainConfig.from_values(flagfile.load(str(tmp_path))) == previous
    assert loop.flag_changes(str(tmp_path), previous) == {}
    with pytest.raises(loop.TrainingError, match="--synthetic_subjects=6 \\(now 7\\)"):
        loop.flag_changes(str(tmp_path), previous.replace(synthetic_subjects=7))


@pytest.mark.slow
def test_divergence_stops_naming_the_step_without_a_checkpoint(tmp_path):
    with pytest.raises(loop.TrainingError, match=r"^training diverged at step \d+ \(.* not finite\)"):
        train(tmp_path, lr=1e12, epochs=1, steps_per_epoch=6)
    assert not os.path.exists(tmp_path / "checkpoints" / "checkpoint")


def test_a_parameter_count_other_than_the_design_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(loop, "DESIGN_FILTERS", FILTERS)
    with pytest.raises(loop.TrainingError, match="parameters, the design 114,344,708: models/networks.py changed"):
        loop.build_model(tiny_config(), loop.Plan(3, 2, 3))


def test_deeper_discriminators_are_not_the_design_and_not_an_error(monkeypatch):
    monkeypatch.setattr(loop, "DESIGN_FILTERS", FILTERS)
    _, counts = loop.build_model(tiny_config(discriminator_layers=4), loop.Plan(3, 2, 3))
    assert counts["discriminator_x"] == counts["discriminator_y"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("flags", [{"gan_loss": "bce", "lambda_identity": 0.0, "pool_size": 0},
                                   {"batch_size": 2, "precision": "mixed_bfloat16"}],
                         ids=["bce_no_identity_no_pool", "batch_2_mixed_bfloat16"])
def test_training_paths(tmp_path, flags):
    train(tmp_path, epochs=1, **flags)
    assert tf.keras.mixed_precision.global_policy().name == flags.get("precision", "float32")  # the run used it
    state = checkpoint_state(tmp_path)
    assert state["step/.ATTRIBUTES/VARIABLE_VALUE"] == 3
    weights = [value for name, value in state.items() if "/_trainable_variables/" in name]
    assert weights and all(value.dtype == np.float32 and np.isfinite(value).all() for value in weights)
    tags = summaries(str(tmp_path))
    has_identity = flags.get("lambda_identity", 0.5) > 0
    assert ("loss/g/identity" in tags) == has_identity and ("loss/f/identity" in tags) == has_identity
    # The pool took every fake of the 3 steps, or none when it is off (the discriminators see today's fakes).
    pool_count = state["pool_a/count/.ATTRIBUTES/VARIABLE_VALUE"]
    assert pool_count == (0 if flags.get("pool_size", 50) == 0 else 3 * flags.get("batch_size", 1))


def narrow_model(precision: str) -> CycleGAN:
    """A narrow CycleGAN whose weights are seeded identically for every precision."""
    tf.keras.mixed_precision.set_global_policy(precision)
    tf.keras.utils.set_random_seed(0)
    return CycleGAN(ModelConfig(precision=precision, pool_size=0, filters=FILTERS), total_steps=10, decay_start=5)


def one_step(model: CycleGAN, seed: int = 1) -> dict[str, float]:
    real_a = tf.random.stateless_uniform((1, 256, 256, 1), (seed, 1), -1, 1)
    real_b = tf.random.stateless_uniform((1, 256, 256, 1), (seed, 2), -1, 1)
    return {name: float(value) for name, value in model.compiled_step(False)(real_a, real_b).items()}


def first_moments(model: CycleGAN, name: str) -> np.ndarray:
    optimizer = model.optimizers[name]
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return np.concatenate([np.ravel(v.numpy()) for v in inner._momentums])


@pytest.mark.slow
def test_mixed_float16_scales_the_loss_and_unscales_the_gradients():
    reference = narrow_model("float32")
    one_step(reference)
    model = narrow_model("mixed_float16")
    # The default start (2**15) overflows float16 in the first steps, which are then skipped; start lower so
    # that this step applies.
    for name in NETWORKS:
        model.optimizers[name].dynamic_scale.assign(2.0**8)
    losses = one_step(model)
    loss = tf.constant(losses["generators/total"])
    assert float(model._scaled("generator_g", loss)) == pytest.approx(losses["generators/total"] * 2**8, rel=1e-6)
    # Adam's first moment is (1 - beta_1) * gradient: with the gradients left scaled it would be 256x larger.
    for name in NETWORKS:
        assert float(model.optimizers[name].dynamic_scale) == 2.0**8  # finite: not halved, so the step applied
        ratio = np.median(np.abs(first_moments(model, name)) / (np.abs(first_moments(reference, name)) + 1e-30))
        assert 0.5 < ratio < 2.0, (name, ratio)


@pytest.mark.slow
def test_mixed_float16_skips_a_step_whose_scaled_gradients_overflow():
    model = narrow_model("mixed_float16")
    optimizer = model.optimizers["generator_g"]
    optimizer.dynamic_scale.assign(3e38)  # the scaled loss overflows float32
    before = [w.numpy().copy() for w in model.generator_g.trainable_weights]
    one_step(model)
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, model.generator_g.trainable_weights))
    assert float(optimizer.dynamic_scale) == pytest.approx(1.5e38, rel=1e-6)
    assert int(model.step) == 1  # the run's step still counts it, so the schedule and data order go on


@pytest.mark.slow
def test_mixed_float16_run_resumes_exactly(tmp_path):
    """The mixed policy's resume, with the one state of its own (the loss scale); mixed_bfloat16 has none beyond
    float32's and trains in test_training_paths."""
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    train(uninterrupted, precision="mixed_float16", epochs=2, steps_per_epoch=1)
    train(resumed, precision="mixed_float16", epochs=1, steps_per_epoch=1)
    train(resumed, precision="mixed_float16", epochs=2, steps_per_epoch=1)
    a, b = checkpoint_state(uninterrupted), checkpoint_state(resumed)
    assert a["step/.ATTRIBUTES/VARIABLE_VALUE"] == 2
    assert any("dynamic_scale" in name for name in a)
    assert differing(a, b) == {}


# ---------------------------------------------------------------- --data_dir in each layout

SIDE = 64  # phantom slices downsampled 4x: each lands in the middle of the 256 canvas
# Three subjects with 2, 3 and 4 non-empty axial slices.
SLICES_PER_SUBJECT = (2, 3, 4)
NIFTI_PATHS = {  # subject k -> (T1, T2) inside the data_dir
    "ixi": lambda k: (f"IXI-T1/IXI10{k}-Guys-000{k}-T1.nii.gz", f"IXI-T2/IXI10{k}-Guys-000{k}-T2.nii.gz"),
    "brats": lambda k: (f"BraTS-GLI-0000{k}-000/BraTS-GLI-0000{k}-000-t1n.nii.gz",
                        f"BraTS-GLI-0000{k}-000/BraTS-GLI-0000{k}-000-t2w.nii.gz"),
    "bids": lambda k: (f"sub-0{k}/anat/sub-0{k}_T1w.nii.gz", f"sub-0{k}/anat/sub-0{k}_T2w.nii.gz"),
}


def unit_slices(images) -> list[np.ndarray]:
    """Slices normalised as documented (99.5th percentile of the positive voxels of the volume, clipped to
    [0, 1]), written independently of data/preprocess.py."""
    stack = np.stack(images).astype(np.float64)
    return list(np.clip(stack / np.percentile(stack[stack > 0], 99.5), 0, 1))


def on_canvas(unit: np.ndarray) -> np.ndarray:
    canvas = np.zeros((256, 256))
    offset = (256 - SIDE) // 2
    canvas[offset:offset + SIDE, offset:offset + SIDE] = unit
    return canvas


def write_layout(root, layout: str, write_nifti) -> dict[str, list[np.ndarray]]:
    """Three subjects in `layout`; returns each written T1 file -> its expected unit slices."""
    from PIL import Image

    from data import phantom

    t1, t2 = phantom.paired_test(sum(SLICES_PER_SUBJECT), 5)
    expected, first = {}, 0
    for k, count in enumerate(SLICES_PER_SUBJECT):
        images = {"t1": [image[::4, ::4] for image in t1[first:first + count]],
                  "t2": [image[::4, ::4] for image in t2[first:first + count]]}
        first += count
        if layout == "cyclegan":  # unpaired folders: subject 0 is T1 training, 1 T2 training, 2 the test pair
            folders = {0: (("trainA", "t1"),), 1: (("trainB", "t2"),), 2: (("testA", "t1"), ("testB", "t2"))}[k]
            for folder, contrast in folders:
                (root / folder).mkdir(parents=True, exist_ok=True)
                for index, image in enumerate(images[contrast]):
                    pixels = np.round(image / image.max() * 60000).astype(np.uint16)
                    Image.fromarray(pixels).save(root / folder / f"s{k}_{index}.png")
                    expected[str(root / folder / f"s{k}_{index}.png")] = unit_slices([pixels])  # per image
        else:
            for relative, contrast in zip(NIFTI_PATHS[layout](k), ("t1", "t2")):
                volume = np.zeros((SIDE, SIDE, count + 1), np.float32)  # slice 0 empty: dropped
                for index, image in enumerate(images[contrast], start=1):
                    volume[:, :, index] = image.T[::-1, ::-1]  # axial slice[r, c] = volume[X-1-c, Y-1-r]
                write_nifti(root / relative, volume)
                expected[str(root / relative)] = unit_slices(images[contrast])
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["cyclegan", "ixi", "brats", "bids"])
def test_data_dir_in_each_layout_trains_on_disjoint_subjects(tmp_path, write_nifti, layout):
    """Domain A holds exactly the T1 slices of the layout's T1 training files, B has as many slices as its T2
    files, and no subject is in both domains or in the test split; then (once) a step trains on them."""
    from data import layouts

    root = tmp_path / "data"
    expected = write_layout(root, layout, write_nifti)
    files = layouts.layout_files(str(root))
    data = loop.load_data(tiny_config(data_dir=str(root)))
    if layout == "cyclegan":
        train_a = sorted(str(path) for path in (root / "trainA").iterdir())
        slices_b = sum(1 for _ in (root / "trainB").iterdir())
    else:
        train_a = sorted(files.train_a)
        subjects = [{layouts.subject_id(path, layout) for path in group}
                    for group in (files.train_a, files.train_b, files.test_a)]
        assert all(len(group) == 1 for group in subjects) and len(set.union(*subjects)) == 3, subjects
        slices_b = sum(len(expected[path]) for path in files.train_b)
    assert len(data.slices_b) == slices_b
    want = [image for path in train_a for image in expected[path]]
    assert len(data.slices_a) == len(want)
    for got, image in zip(data.slices_a, want):  # area-style resize is not used: 64 px fits the canvas
        np.testing.assert_allclose(got, on_canvas(image), atol=1e-6)
    if layout == "bids":  # one layout trains a step; the layouts differ only in the loading checked above
        assert train(tmp_path / "run", data_dir=str(root), epochs=1, steps_per_epoch=1) == 1
        assert flagfile.load(str(tmp_path / "run"))["data_dir"] == str(root)


# ---------------------------------------------------------------- tf.distribute

def one_step_on(strategy_name: str, replicas: int):
    """Weights before and after one step of a narrow model (pool off, dropout off) with global batch 2."""
    config = tiny_config(batch_size=2, pool_size=0, strategy=strategy_name, cpu_replicas=replicas)
    strategy, _ = loop.configure_tensorflow(config)
    assert strategy.num_replicas_in_sync == replicas
    data = loop.load_data(config)
    with strategy.scope():
        model, _ = loop.build_model(config, loop.make_plan(config, data))
    for name in ("generator_g", "generator_f"):
        for layer in model.network(name)._flatten_layers():
            if isinstance(layer, tf.keras.layers.Dropout):
                layer.rate = 0.0
    before = {name: [w.numpy().copy() for w in model.network(name).trainable_weights] for name in NETWORKS}
    real_a, real_b = next(loop.epoch_batches(config, data, 0, 0, strategy))
    losses = {name: float(value) for name, value in model.compiled_step(False, strategy)(real_a, real_b).items()}
    after = {name: [w.numpy() for w in model.network(name).trainable_weights] for name in NETWORKS}
    return before, after, losses


@pytest.mark.slow
def test_two_replicas_of_batch_one_make_the_update_of_one_device_with_batch_two():
    before, one_device, losses_one = one_step_on("one_device", 1)
    before_mirrored, mirrored, losses_mirrored = one_step_on("mirrored", 2)
    for name in NETWORKS:  # the same seeded start
        assert all(np.array_equal(a, b) for a, b in zip(before[name], before_mirrored[name]))
    assert losses_mirrored == pytest.approx(losses_one, rel=1e-5)
    for name in NETWORKS:
        # Adam's first step moves each weight by about lr * sign(gradient); float rounding of the two ways of
        # summing the batch may flip a sign only where a gradient is ~0, so compare the whole update's norm.
        change = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(one_device[name], before[name])))
        difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(one_device[name], mirrored[name])))
        assert change > 0 and difference / change < 1e-2, (name, difference, change)


@pytest.mark.slow
def test_mirrored_run_keeps_one_pool_and_resumes_exactly(tmp_path, monkeypatch, uninterrupted):
    mirrored = dict(strategy="mirrored", cpu_replicas=2, batch_size=2)
    train(tmp_path / "uninterrupted", **mirrored)
    stop_with_sigterm_after(monkeypatch, 4)
    with pytest.raises(loop.Stopped):
        train(tmp_path / "resumed", **mirrored)
    monkeypatch.undo()
    assert train(tmp_path / "resumed", **mirrored) == 6
    a, b = checkpoint_state(tmp_path / "uninterrupted"), checkpoint_state(tmp_path / "resumed")
    assert differing(a, b) == {}
    assert a["pool_a/count/.ATTRIBUTES/VARIABLE_VALUE"] == 12  # one pool: both replicas' fakes of 6 steps
    assert a["pool_a/images/.ATTRIBUTES/VARIABLE_VALUE"].shape == (50, 256, 256, 1)
    # The object graph is the single-device one, so evaluate.py, translate.py and export.py read it as they are.
    single = checkpoint_state(uninterrupted)
    assert {name: value.shape for name, value in a.items()} == {name: value.shape for name, value in single.items()}


def test_a_batch_that_does_not_divide_over_the_replicas_is_a_one_line_error():
    with pytest.raises(loop.TrainingError, match=r"^--batch_size=3 does not divide evenly over 2 replicas$"):
        loop.configure_tensorflow(tiny_config(batch_size=3, strategy="mirrored", cpu_replicas=2))


@pytest.mark.slow
def test_profile_steps_writes_a_trace_tensorboard_shows(uninterrupted):
    traces = [os.path.join(root, name) for root, _, names in os.walk(uninterrupted / "plugins" / "profile")
              for name in names if name.endswith(".xplane.pb")]
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


@pytest.mark.parametrize("text", ["3", "2,x", "3,2", "0,1"])
def test_bad_profile_steps_are_one_line_errors(text):
    with pytest.raises(loop.TrainingError, match=f"^--profile_steps={text}: "):
        loop.profile_range(tiny_config(profile_steps=text))


@pytest.mark.slow
def test_cache_dir_trains_on_the_cached_slices(tmp_path):
    """--cache_dir: the loop reads the same slices (to the cache's 16-bit precision) and trains on them."""
    in_memory = loop.load_data(tiny_config())
    cached = loop.load_data(tiny_config(cache_dir=str(tmp_path / "cache")))
    assert len(cached.slices_a) == len(in_memory.slices_a) and len(cached.slices_b) == len(in_memory.slices_b)
    for index in (0, len(in_memory.slices_a) - 1):
        np.testing.assert_allclose(cached.slices_a[index], in_memory.slices_a[index], atol=0.5 / 65535 + 1e-7)
    assert train(tmp_path / "run", cache_dir=str(tmp_path / "cache"), epochs=1, steps_per_epoch=2) == 2


def test_data_larger_than_half_the_memory_is_refused_before_decoding(monkeypatch):
    from data import cache

    monkeypatch.setattr(cache, "available_memory_bytes", lambda: 1_000_000)
    with pytest.raises(loop.TrainingError, match="more than half of the 0.0 GB available; pass --cache_dir=DIR"):
        loop.load_data(tiny_config())


def test_summary_samples_spread_through_the_slices_not_the_first_few():
    assert loop.spread(3, 118) == [29, 58, 88]  # a quarter, half and three quarters into a volume's 118 slices
    assert loop.spread(1, 9) == [4]
    assert loop.spread(3, 2) == [0, 1]  # fewer slices than samples: each once
    assert loop.spread(0, 5) == [] and loop.spread(3, 0) == []
    assert loop.spread_out(list("abcdefghi"), 1) == ["e"]
