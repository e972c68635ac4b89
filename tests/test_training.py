"""The pieces of the update: pool rule, learning-rate schedule, the step itself."""

import numpy as np
import pytest
import tensorflow as tf

from data import masks
from training.config import ModelConfig
from training.cyclegan import NETWORKS, CycleGAN
from training.pool import ImagePool
from training.schedule import LinearDecay


def labelled(values, shape=(2, 2, 1)):
    """A batch whose i-th image is filled with values[i], so images can be told apart by one pixel."""
    return tf.stack([tf.fill(shape, float(v)) for v in values])


def test_pool_fills_then_swaps_with_probability_half():
    pool = ImagePool(4, image_shape=(2, 2, 1), seed=3)
    traced = tf.function(pool.query)
    query = lambda images, step: traced(images, tf.constant(step, tf.int64))  # one trace, not one per step
    out = query(labelled([1, 2]), 0)
    np.testing.assert_array_equal(out[:, 0, 0, 0], [1, 2])  # filling: returned as given
    out = query(labelled([3, 4]), 1)
    np.testing.assert_array_equal(out[:, 0, 0, 0], [3, 4])
    assert int(pool.count) == 4
    swapped = 0
    queries = 400
    for step, value in enumerate(range(5, 5 + queries), start=2):
        before = set(pool.images.numpy()[:, 0, 0, 0])
        got = float(query(labelled([value]), step)[0, 0, 0, 0])
        after = list(pool.images.numpy()[:, 0, 0, 0])
        if got == value:  # kept: the pool is unchanged
            assert set(after) == before
        else:  # swapped: a stored image came out and the new one took its slot
            swapped += 1
            assert got in before and value in after and got not in after
    # Binomial(400, 0.5): 0.4..0.6 is five standard deviations (0.025) either side.
    assert 0.4 < swapped / queries < 0.6


def test_pool_within_one_batch_is_sequential():
    """Images of one (gathered) batch go through the rule in order: the first two fill the pool, the third
    meets a full pool and is either kept or swapped for one of them."""
    pool = ImagePool(2, image_shape=(2, 2, 1), seed=5)
    out = pool.query(labelled([1, 2, 3]), 0).numpy()[:, 0, 0, 0]
    stored = set(pool.images.numpy()[:, 0, 0, 0])
    assert list(out[:2]) == [1, 2] and int(pool.count) == 2
    if out[2] == 3:
        assert stored == {1, 2}
    else:
        assert out[2] in (1, 2) and stored == {3, 3 - out[2]}


def test_pool_draws_depend_on_seed_and_step_only():
    """The decisions are a function of (seed, step): two pools given the same history answer alike, whatever
    happened in between, so every replica and a restored pool decide the same; another step decides anew."""
    pools = [ImagePool(3, image_shape=(2, 2, 1), seed=1) for _ in range(2)]
    for pool in pools:
        for step, value in enumerate(range(3)):
            pool.query(labelled([value]), step)
    answers = [[float(pool.query(labelled([10 + step]), step)[0, 0, 0, 0]) for step in range(3, 40)] for pool in pools]
    assert answers[0] == answers[1]
    assert len(set(answers[0]) - set(range(10, 50))) > 0  # some were swapped for stored images


def test_pool_size_zero_is_a_pass_through():
    pool = ImagePool(0, image_shape=(2, 2, 1))
    batch = labelled([7, 8])
    assert pool.query(batch, 0) is batch


def test_pool_save_and_restore(tmp_path):
    pool = ImagePool(3, image_shape=(2, 2, 1), seed=1)
    for step in range(6):
        pool.query(labelled([step]), step)
    path = tf.train.Checkpoint(pool=pool).save(str(tmp_path / "pool"))
    restored = ImagePool(3, image_shape=(2, 2, 1), seed=1)
    tf.train.Checkpoint(pool=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(restored.images.numpy(), pool.images.numpy())
    assert int(restored.count) == 3
    # Both pools now answer the same queries the same way.
    for step in range(6, 16):
        np.testing.assert_array_equal(pool.query(labelled([step]), step).numpy(),
                                      restored.query(labelled([step]), step).numpy())


def test_linear_decay():
    schedule = LinearDecay(2e-4, total_steps=200, decay_start=100)
    assert float(schedule(0)) == pytest.approx(2e-4)
    assert float(schedule(99)) == pytest.approx(2e-4)
    assert float(schedule(100)) == pytest.approx(2e-4)
    assert float(schedule(150)) == pytest.approx(1e-4)
    assert float(schedule(200)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        LinearDecay(2e-4, total_steps=10, decay_start=11)


@pytest.mark.parametrize("xla", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["graph", "xla"])
def test_one_step_changes_weights(xla):
    model = CycleGAN(ModelConfig(pool_size=2, filters=4), total_steps=10, decay_start=5)  # the design, narrow
    before = {name: [w.numpy().copy() for w in model.network(name).trainable_weights] for name in NETWORKS}
    real_a = tf.random.uniform((1, 256, 256, 1), -1, 1, seed=1)
    real_b = tf.random.uniform((1, 256, 256, 1), -1, 1, seed=2)
    out = model.compiled_step(xla)(real_a, real_b)
    expected = {"g/adversarial", "f/adversarial", "cycle/a_to_b_to_a", "cycle/b_to_a_to_b", "g/identity",
                "f/identity", "generators/total", "d_x/total", "d_y/total"}
    assert set(out) == expected
    assert all(np.isfinite(float(v)) for v in out.values())
    for name in NETWORKS:
        after = model.network(name).trainable_weights
        changed = sum(not np.array_equal(b, a.numpy()) for b, a in zip(before[name], after))
        assert changed == len(after), f"{name}: only {changed} of {len(after)} weights changed"
    assert int(model.step) == 1
    assert int(model.pool_a.count) == 1 and int(model.pool_b.count) == 1
    assert all(int(model.optimizers[name].iterations) == 1 for name in NETWORKS)


def test_discriminator_layers_deepen_both_discriminators_and_leave_the_generators():
    model = CycleGAN(ModelConfig(pool_size=0, filters=4, discriminator_layers=4), total_steps=10, decay_start=5)
    design = CycleGAN(ModelConfig(pool_size=0, filters=4), total_steps=10, decay_start=5)
    image = tf.zeros((1, 256, 256, 1))
    for name in ("discriminator_x", "discriminator_y"):
        assert model.network(name)(image).shape == (1, 14, 14, 1)  # 142x142 patches
        assert design.network(name)(image).shape == (1, 30, 30, 1)
    for name in ("generator_g", "generator_f"):
        assert model.network(name).count_params() == design.network(name).count_params()


def head_with_a_dark_ventricle(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A [256, 256] unit phantom (air 0, a textured head, and inside it a ventricle at 0 that touches nothing)
    and its head."""
    rows, columns = np.mgrid[:256, :256]
    head = ((rows - 128) / 100) ** 2 + ((columns - 128) / 80) ** 2 < 1
    unit = np.where(head, np.random.default_rng(seed).uniform(0.3, 0.9, (256, 256)), 0.0)
    unit[(np.abs(rows - 128) < 12) & (np.abs(columns - 128) < 6)] = 0.0
    return unit.astype(np.float32), head


@pytest.mark.parametrize("train_air_mask", [True, False])
def test_train_air_mask_sets_the_fakes_the_discriminators_see_to_air_exactly_where_the_source_is_air(train_air_mask):
    model = CycleGAN(ModelConfig(pool_size=1, train_air_mask=train_air_mask, filters=4), total_steps=10, decay_start=5)
    (unit_a, head_a), (unit_b, head_b) = head_with_a_dark_ventricle(1), head_with_a_dark_ventricle(2)
    model.train_step(tf.constant(unit_a * 2 - 1)[None, ..., None], tf.constant(unit_b * 2 - 1)[None, ..., None])
    for pool, unit, head in ((model.pool_b, unit_a, head_a), (model.pool_a, unit_b, head_b)):  # G(a) and F(b)
        fake = pool.images[0, ..., 0].numpy()
        air = masks.air_mask(unit)  # the NumPy rule of inference, an independent reference for the graph's
        assert np.array_equal(air, ~head)  # the phantom's air, and not its ventricle
        assert np.all(fake[air] == -1.0) == train_air_mask
        assert np.mean(fake[~air] == -1.0) < 0.01  # the head, dark ventricle included, is the network's


@pytest.mark.parametrize("step, weight", [(0, 10.0), (2, 5.0), (4, 0.0), (7, 0.0)])
def test_inversion_prior_pulls_each_translation_toward_its_reversed_source_and_fades_by_the_step(step, weight):
    model = CycleGAN(ModelConfig(pool_size=1, inversion_prior=10.0, inversion_prior_steps=4, filters=4), total_steps=10,
                     decay_start=5)
    model.step.assign(step)
    (unit_a, _), (unit_b, _) = head_with_a_dark_ventricle(1), head_with_a_dark_ventricle(2)
    out = model.train_step(tf.constant(unit_a * 2 - 1)[None, ..., None], tf.constant(unit_b * 2 - 1)[None, ..., None])
    for term, pool, unit in (("g/inversion_prior", model.pool_b, unit_a), ("f/inversion_prior", model.pool_a, unit_b)):
        fake = pool.images[0, ..., 0].numpy()  # the translation the loss judged (a pool of one keeps the first)
        reversed_unit = np.where(masks.air_mask(unit), 0.0, 1.0 - unit)  # the dark ventricle turns bright
        assert float(out[term]) == pytest.approx(weight * np.mean(np.abs(fake - (reversed_unit * 2 - 1))), rel=1e-4)
    assert float(out["generators/total"]) == pytest.approx(
        sum(float(value) for name, value in out.items() if name.startswith(("g/", "f/", "cycle/"))), rel=1e-5)


def test_optimizers_follow_the_global_step():
    """The rate comes from the run's step, not each optimizer's own counter (which a float16
    loss-scale optimizer does not advance on skipped steps)."""
    model = CycleGAN(ModelConfig(pool_size=0, filters=4), total_steps=100, decay_start=50)
    model.step.assign(75)
    for name in NETWORKS:
        optimizer = model.optimizers[name]
        assert int(optimizer.iterations) == 0
        assert float(optimizer.learning_rate) == pytest.approx(1e-4)


def test_discriminators_learn_at_their_ratio_of_the_generators_rate_on_the_same_schedule():
    model = CycleGAN(ModelConfig(pool_size=0, discriminator_lr_ratio=4.0, filters=4), total_steps=100, decay_start=50)
    for step, generators in ((0, 2e-4), (75, 1e-4)):
        model.step.assign(step)
        rates = {name: float(model.optimizers[name].learning_rate) for name in NETWORKS}
        assert rates == pytest.approx({"generator_g": generators, "generator_f": generators,
                                       "discriminator_x": 4 * generators, "discriminator_y": 4 * generators})
