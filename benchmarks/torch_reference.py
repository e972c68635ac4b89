"""The reference CycleGAN in PyTorch, as its authors define it, for benchmarks/compare_pytorch.py.

Written for this project from the definitions in junyanz/pytorch-CycleGAN-and-pix2pix
(models/networks.py: get_norm_layer, init_weights, UnetGenerator, UnetSkipConnectionBlock,
NLayerDiscriminator, GANLoss; models/cycle_gan_model.py: forward, backward_G, backward_D_basic,
optimize_parameters), with the options that match our design:

- generator `--netG unet_256`: U-Net with 8 down-samplings, ngf=64, 1 input and 1 output channel
  (the authors' CycleGAN default is resnet_9blocks; unet_256 is the architecture ours follows);
- `--norm instance`: InstanceNorm2d(affine=False, track_running_stats=False), hence biased convolutions
  (their use_bias is True exactly when the norm is instance norm); the innermost block has no norm after
  its down-convolution, the outermost none at all, and the output transposed convolution is biased;
- `--no_dropout` (True by default for CycleGAN in their cycle_gan_model.py: "default CycleGAN did not use
  dropout"); ours keeps pix2pix's Dropout(0.5) in its first three decoder blocks, which changes no
  parameter count and costs next to nothing;
- discriminator `--netD basic`: 70x70 PatchGAN, 3 layers, ndf=64, same norm, biased convolutions;
- `--init_type normal --init_gain 0.02`: conv weights ~ N(0, 0.02), biases 0;
- `--gan_mode lsgan` (MSE against 1 or 0), lambda_A = lambda_B = 10, lambda_identity = 0.5;
- Adam lr 2e-4, betas (0.5, 0.999): one optimizer for both generators, one for both discriminators;
- `--pool_size 0`: their ImagePool.query returns the new fakes unchanged, so it is left out.

2 generators (54,403,457 parameters each) + 2 discriminators (2,762,689 each) = 114,332,292.
Ours has 114,344,708: no conv biases, but a learned scale and offset in every instance norm and a norm
on the 1x1 bottleneck (models/networks.py).
"""

import itertools

import torch
from torch import nn

GENERATOR_PARAMS = 54_403_457
DISCRIMINATOR_PARAMS = 2_762_689
TOTAL_PARAMS = 2 * GENERATOR_PARAMS + 2 * DISCRIMINATOR_PARAMS  # 114,332,292

LAMBDA_CYCLE = 10.0  # their lambda_A and lambda_B
LAMBDA_IDENTITY = 0.5


def norm(channels: int) -> nn.Module:
    """Their get_norm_layer("instance")."""
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


USE_BIAS = True  # their use_bias: the norm is InstanceNorm2d (no affine shift of its own)


class UnetBlock(nn.Module):
    """One level of the U-Net: x -> [x, up(sub(down(x)))] (the outermost returns up(sub(down(x))) alone)."""

    def __init__(self, outer: int, inner: int, input_nc: int | None = None, submodule: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        input_nc = outer if input_nc is None else input_nc
        down_conv = nn.Conv2d(input_nc, inner, kernel_size=4, stride=2, padding=1, bias=USE_BIAS)
        if outermost:
            layers = [down_conv, submodule, nn.ReLU(True),
                      nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2, True), down_conv, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, kernel_size=4, stride=2, padding=1, bias=USE_BIAS), norm(outer)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down_conv, norm(inner), submodule, nn.ReLU(True),
                      nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1, bias=USE_BIAS),
                      norm(outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """Their UnetGenerator(input_nc, output_nc, num_downs, ngf, norm_layer, use_dropout), built inside out."""

    def __init__(self, input_nc: int = 1, output_nc: int = 1, num_downs: int = 8, ngf: int = 64,
                 dropout: bool = False):
        super().__init__()
        block = UnetBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetBlock(ngf * 8, ngf * 8, submodule=block, dropout=dropout)
        block = UnetBlock(ngf * 4, ngf * 8, submodule=block)
        block = UnetBlock(ngf * 2, ngf * 4, submodule=block)
        block = UnetBlock(ngf, ngf * 2, submodule=block)
        self.model = UnetBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True)

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """Their PatchGAN: conv s2 + LeakyReLU, (n_layers - 1) x [conv s2, norm, LeakyReLU], conv s1, norm,
    LeakyReLU, conv s1 to one channel (70x70 receptive field for n_layers=3; 30x30 logits at 256x256)."""

    def __init__(self, input_nc: int = 1, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            previous, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * previous, ndf * mult, kernel_size=4, stride=2, padding=1, bias=USE_BIAS),
                       norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        previous, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * previous, ndf * mult, kernel_size=4, stride=1, padding=1, bias=USE_BIAS),
                   norm(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """Their init_weights(net, "normal", gain): every Conv*/Linear weight ~ N(0, gain), bias 0."""
    for module in net.modules():
        name = type(module).__name__
        if hasattr(module, "weight") and ("Conv" in name or "Linear" in name):
            nn.init.normal_(module.weight.data, 0.0, gain)
            if getattr(module, "bias", None) is not None:
                nn.init.constant_(module.bias.data, 0.0)
    return net


def build_networks(seed: int = 0) -> dict[str, nn.Module]:
    """G_A (A -> B), G_B (B -> A), D_A (judges B) and D_B (judges A), as their CycleGANModel names them."""
    torch.manual_seed(seed)
    return {
        "G_A": init_weights(UnetGenerator()),
        "G_B": init_weights(UnetGenerator()),
        "D_A": init_weights(NLayerDiscriminator()),
        "D_B": init_weights(NLayerDiscriminator()),
    }


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def lsgan(prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Their GANLoss("lsgan"): MSE against a constant 1 (real) or 0 (fake) map."""
    return nn.functional.mse_loss(prediction, torch.full_like(prediction, 1.0 if target_is_real else 0.0))


def _set_requires_grad(nets, requires_grad: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad = requires_grad


class ReferenceCycleGAN:
    """Their CycleGANModel in training mode, reduced to what one optimize_parameters() needs."""

    def __init__(self, seed: int = 0, lr: float = 2e-4, beta1: float = 0.5):
        self.nets = build_networks(seed)
        n = self.nets
        self.optimizer_g = torch.optim.Adam(itertools.chain(n["G_A"].parameters(), n["G_B"].parameters()),
                                            lr=lr, betas=(beta1, 0.999))
        self.optimizer_d = torch.optim.Adam(itertools.chain(n["D_A"].parameters(), n["D_B"].parameters()),
                                            lr=lr, betas=(beta1, 0.999))
        for net in n.values():
            net.train()

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Their optimize_parameters() on one batch (NCHW): forward, G step, then D step on detached fakes."""
        g_a, g_b, d_a, d_b = (self.nets[name] for name in ("G_A", "G_B", "D_A", "D_B"))
        # forward()
        fake_b = g_a(real_a)
        rec_a = g_b(fake_b)
        fake_a = g_b(real_b)
        rec_b = g_a(fake_a)
        # G_A and G_B: backward_G() with the discriminators frozen
        _set_requires_grad([d_a, d_b], False)
        self.optimizer_g.zero_grad()
        l1 = nn.functional.l1_loss
        losses = {
            "idt_A": l1(g_a(real_b), real_b) * LAMBDA_CYCLE * LAMBDA_IDENTITY,
            "idt_B": l1(g_b(real_a), real_a) * LAMBDA_CYCLE * LAMBDA_IDENTITY,
            "G_A": lsgan(d_a(fake_b), True),
            "G_B": lsgan(d_b(fake_a), True),
            "cycle_A": l1(rec_a, real_a) * LAMBDA_CYCLE,
            "cycle_B": l1(rec_b, real_b) * LAMBDA_CYCLE,
        }
        losses["G"] = (losses["G_A"] + losses["G_B"] + losses["cycle_A"] + losses["cycle_B"] + losses["idt_A"]
                       + losses["idt_B"])
        losses["G"].backward()
        self.optimizer_g.step()
        # D_A and D_B: backward_D_basic() each on the (pool_size=0: unpooled) detached fakes
        _set_requires_grad([d_a, d_b], True)
        self.optimizer_d.zero_grad()
        for name, net, real, fake in (("D_A", d_a, real_b, fake_b), ("D_B", d_b, real_a, fake_a)):
            loss = (lsgan(net(real), True) + lsgan(net(fake.detach()), False)) * 0.5
            loss.backward()
            losses[name] = loss
        self.optimizer_d.step()
        return {name: value.detach() for name, value in losses.items()}
