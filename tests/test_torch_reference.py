"""The PyTorch reference of benchmarks/compare_pytorch.py: its size, its train step, and the FLOP formula.

PyTorch comes with the dev extra; where it is absent the tests that need it skip.
"""

import math

import pytest

from benchmarks import compare_pytorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def reference(torch):
    from benchmarks import torch_reference

    return torch_reference


def test_parameter_counts_are_the_authors(reference):
    nets = reference.build_networks()
    counts = {name: reference.count_parameters(net) for name, net in nets.items()}
    # unet_256 with biased convolutions and affine-free instance norm; the basic 3-layer PatchGAN.
    assert counts == {"G_A": 54_403_457, "G_B": 54_403_457, "D_A": 2_762_689, "D_B": 2_762_689}
    assert sum(counts.values()) == 114_332_292 == reference.TOTAL_PARAMS


def test_one_train_step_updates_all_four_networks(torch, reference):
    from torch.utils.flop_counter import FlopCounterMode

    gan = reference.ReferenceCycleGAN(seed=0)
    before = {name: {key: value.detach().clone() for key, value in net.named_parameters()}
              for name, net in gan.nets.items()}
    generator = torch.Generator().manual_seed(0)
    real_a, real_b = (torch.rand(1, 1, 256, 256, generator=generator) * 2 - 1 for _ in range(2))
    counter = FlopCounterMode(display=False)
    with counter:
        losses = gan.train_step(real_a, real_b)
    assert set(losses) == {"G", "G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B"}
    assert all(math.isfinite(float(value)) for value in losses.values())
    for name, net in gan.nets.items():
        for key, value in net.named_parameters():
            # Biases before an instance norm get a zero gradient (the norm removes them), so only weights.
            if key.endswith("weight"):
                assert not torch.equal(value.detach(), before[name][key]), f"{name}.{key} did not change"
    # The formula in compare_pytorch's docstring is what PyTorch counts on the authors' step.
    assert counter.get_total_flops() == compare_pytorch.step_flops()["step"]


def test_conv_macs_by_hand():
    # 5x5x2 -> 5x5x8, 3x3 kernel, "same" padding: 25 outputs x 8 channels x (2 x 9) multiply-adds.
    assert compare_pytorch.conv_macs((5, 5), 2, 8, kernel=3, stride=1, padding=1) == (3600, (5, 5))
    # 6x6x3 -> 3x3x4, 4x4 kernel stride 2 padding 1: 9 x 4 x (3 x 16).
    assert compare_pytorch.conv_macs((6, 6), 3, 4, kernel=4, stride=2, padding=1) == (1728, (3, 3))
    # Transposed, 4x4x3 -> 8x8x2: each of the 16 x 3 input values is scattered through 2 x 16 weights.
    assert compare_pytorch.conv_macs((4, 4), 3, 2, kernel=4, stride=2, padding=1, transposed=True) == (1536, (8, 8))


def test_step_flops_by_hand():
    flops = compare_pytorch.step_flops()
    g, d = 5_947_523_072, 3_113_254_912  # multiply-adds of one generator / discriminator pass at 256x256
    first = 128 * 128 * 64 * 16  # both networks' first convolution: 128 x 128 x 64 x (1 x 16)
    assert flops["generator_forward"] == 2 * g and flops["discriminator_forward"] == 2 * d
    assert flops["step"] == 2 * (18 * g - 4 * first + 16 * d - 4 * first) == 313_466_552_320
    assert flops["three_times_forward"] == 326_188_007_424  # issue 11's "about 326 GFLOP"
    assert compare_pytorch.step_flops(batch=4)["step"] == 4 * flops["step"]


def test_conv_macs_agree_with_pytorch_counter(torch):
    from torch.utils.flop_counter import FlopCounterMode

    for layer, shape, spec in (
        (torch.nn.Conv2d(2, 8, 3, stride=1, padding=1), (1, 2, 5, 5), ((5, 5), 2, 8, 3, 1, 1, False)),
        (torch.nn.Conv2d(3, 4, 4, stride=2, padding=1), (1, 3, 6, 6), ((6, 6), 3, 4, 4, 2, 1, False)),
        (torch.nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1), (1, 3, 4, 4), ((4, 4), 3, 2, 4, 2, 1, True)),
    ):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            out = layer(torch.zeros(shape))
        macs, out_hw = compare_pytorch.conv_macs(*spec)
        assert tuple(out.shape[2:]) == out_hw
        assert counter.get_total_flops() == 2 * macs
