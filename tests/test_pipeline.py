"""data/pipeline.py on its own: independent domain orders, order a function of (seed, epoch), exact resume by skip."""

import numpy as np
import pytest

from data.augment import AugmentOptions
from data.pipeline import unpaired_dataset

N = 16  # slices per domain
BATCH = 4
STEPS_PER_PASS = N // BATCH
LEVELS = 64  # slice i holds the value i / LEVELS: exact in float32, and so is x * 2 - 1


def labelled_slices(size: int = 4) -> np.ndarray:
    """Slice i is the constant i / LEVELS, so every pixel of a batch says which slice it came from."""
    return np.broadcast_to((np.arange(N) / LEVELS)[:, None, None], (N, size, size)).astype(np.float32)


def labels(batch) -> np.ndarray:
    """The slice index of each image of a [-1, 1] batch, checking the whole image holds it."""
    images = (batch.numpy()[..., 0] + 1) / 2 * LEVELS
    index = np.rint(images[:, 0, 0]).astype(int)
    np.testing.assert_array_equal(images, np.broadcast_to(index[:, None, None], images.shape))
    return index


def orders(seed: int, epoch: int, passes: int = 2, skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The A and B slice indices of the first `passes` passes over the data, one row per pass."""
    slices = labelled_slices()
    dataset = unpaired_dataset(slices, slices, BATCH, seed, epoch=epoch, skip=skip)
    pairs = [(labels(a), labels(b)) for a, b in dataset.take(passes * STEPS_PER_PASS - skip)]
    a, b = (np.concatenate([pair[k] for pair in pairs]) for k in (0, 1))
    return a, b


def test_each_pass_is_a_permutation_and_the_domains_are_shuffled_independently():
    """Both domains come from one array: if B followed A's order (or seed), every position would match."""
    matches = 0
    for epoch in range(10):
        a, b = orders(seed=3, epoch=epoch)
        for order in (a, b):
            for one_pass in order.reshape(-1, N):
                assert sorted(one_pass) == list(range(N))  # every slice once per pass
            assert not np.array_equal(order[:N], order[N:])  # reshuffled each pass
        matches += np.count_nonzero(a == b)
    # Two independent permutations agree at 1 position per N on average: about 20 in 10 epochs of
    # 2 passes (standard deviation about 4.5); a shared order gives 320.
    assert matches <= 40


def test_order_is_a_function_of_seed_and_epoch():
    first = orders(seed=5, epoch=2)
    np.testing.assert_array_equal(np.stack(orders(seed=5, epoch=2)), np.stack(first))
    for other in (orders(seed=5, epoch=3), orders(seed=6, epoch=2)):
        for domain in (0, 1):
            assert not np.array_equal(other[domain], first[domain])


@pytest.mark.parametrize("skip", [1, STEPS_PER_PASS + 1])  # inside the first pass, and in the next one
def test_skip_gives_exactly_the_tail_of_the_uninterrupted_order(skip):
    whole = orders(seed=7, epoch=1)
    tail = orders(seed=7, epoch=1, skip=skip)
    for domain in (0, 1):
        np.testing.assert_array_equal(tail[domain], whole[domain][skip * BATCH:])


def test_skip_reproduces_the_augmentation_draws_too():
    textured = np.random.default_rng(0).random((4, 256, 256)).astype(np.float32)
    options = AugmentOptions(rotate_degrees=10.0, scale=0.1, gamma=0.3, bias_field=0.2)

    def batches(skip: int) -> list[np.ndarray]:
        dataset = unpaired_dataset(textured, textured[::-1], 2, seed=11, options=options, epoch=4, skip=skip)
        return [np.stack([a.numpy(), b.numpy()]) for a, b in dataset.take(5 - skip)]

    whole, resumed = batches(0), batches(3)
    unaugmented = {(image * 2 - 1).tobytes() for image in textured}
    assert not {image.tobytes() for batch in whole for image in batch[..., 0].reshape(-1, 256, 256)} & unaugmented
    for got, expected in zip(resumed, whole[3:], strict=True):
        np.testing.assert_array_equal(got, expected)
