"""The CycleGAN's networks: an 8-level U-Net generator and the 70x70 PatchGAN discriminator
(deeper PatchGANs, larger patches, as an option).

Both follow TensorFlow's pix2pix layout with instance norm in place of batch
norm. The parameter counts are part of the specification (tests/test_models.py).
"""

import tensorflow as tf

from models.instance_norm import InstanceNorm

keras = tf.keras

IMAGE_SIZE = 256
CHANNELS = 1
DESIGN_LAYERS = 3  # the discriminator's stride-2 levels (--discriminator_layers default): 70x70 patches
DESIGN_FILTERS = 64  # the first level's width (train.py's --filters default), which gives the counts below
GENERATOR_PARAMS = 54_408_833
DISCRIMINATOR_PARAMS = 2_763_521
TOTAL_PARAMS = 2 * GENERATOR_PARAMS + 2 * DISCRIMINATOR_PARAMS  # 114,344,708


def _init():
    return keras.initializers.RandomNormal(0.0, 0.02)


def downsample(filters: int, normalize: bool = True, name: str | None = None) -> keras.Sequential:
    """Conv 4x4 stride 2 -> [InstanceNorm] -> LeakyReLU(0.2): halves H and W."""
    layers = [keras.layers.Conv2D(filters, 4, strides=2, padding="same", kernel_initializer=_init(), use_bias=False)]
    if normalize:
        layers.append(InstanceNorm())
    layers.append(keras.layers.LeakyReLU(0.2))
    return keras.Sequential(layers, name=name)


def upsample(filters: int, dropout: bool = False, name: str | None = None) -> keras.Sequential:
    """ConvTranspose 4x4 stride 2 -> InstanceNorm -> [Dropout 0.5] -> ReLU: doubles H and W."""
    layers = [
        keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same", kernel_initializer=_init(), use_bias=False),
        InstanceNorm(),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(0.5))
    layers.append(keras.layers.ReLU())
    return keras.Sequential(layers, name=name)


def build_generator(name: str = "generator", filters: int = 64) -> keras.Model:
    """U-Net mapping a [-1, 1] image to a [-1, 1] image of the other contrast.

    `filters` is the first level's width (the design's 64; the shape comments assume it); tests of the
    training loop's mechanics use a narrow copy of the same architecture.
    """
    f = filters
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, CHANNELS))  # (bs, 256, 256, 1)
    down_stack = [
        downsample(f, normalize=False, name="down1"),  # (bs, 128, 128, 64)
        downsample(2 * f, name="down2"),  # (bs, 64, 64, 128)
        downsample(4 * f, name="down3"),  # (bs, 32, 32, 256)
        downsample(8 * f, name="down4"),  # (bs, 16, 16, 512)
        downsample(8 * f, name="down5"),  # (bs, 8, 8, 512)
        downsample(8 * f, name="down6"),  # (bs, 4, 4, 512)
        downsample(8 * f, name="down7"),  # (bs, 2, 2, 512)
        downsample(8 * f, name="down8"),  # (bs, 1, 1, 512): InstanceNorm is affine-only here
    ]
    up_stack = [
        upsample(8 * f, dropout=True, name="up1"),  # (bs, 2, 2, 1024) after the skip
        upsample(8 * f, dropout=True, name="up2"),  # (bs, 4, 4, 1024)
        upsample(8 * f, dropout=True, name="up3"),  # (bs, 8, 8, 1024)
        upsample(8 * f, name="up4"),  # (bs, 16, 16, 1024)
        upsample(4 * f, name="up5"),  # (bs, 32, 32, 512)
        upsample(2 * f, name="up6"),  # (bs, 64, 64, 256)
        upsample(f, name="up7"),  # (bs, 128, 128, 128)
    ]
    last = keras.layers.Conv2DTranspose(
        CHANNELS, 4, strides=2, padding="same", kernel_initializer=_init(), name="output"
    )  # (bs, 256, 256, 1)

    x = inputs
    skips = []
    for down in down_stack:
        x = down(x)
        skips.append(x)
    for up, skip in zip(up_stack, reversed(skips[:-1])):
        x = up(x)
        x = keras.layers.Concatenate()([x, skip])
    x = last(x)
    outputs = keras.layers.Activation("tanh", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def build_discriminator(name: str = "discriminator", filters: int = 64, layers: int = DESIGN_LAYERS) -> keras.Model:
    """PatchGAN: one real/fake logit per overlapping patch, 70x70 with the design's 3 layers (`filters` as in
    build_generator). `layers` is junyanz's n_layers_D: each one more stride-2 level about doubles the patch
    (4: 142x142, 5: 286x286), so the judge sees more of a slice at once. The shape comments are the design's."""
    f = filters
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, CHANNELS))  # (bs, 256, 256, 1)
    x = downsample(f, normalize=False, name="down1")(inputs)  # (bs, 128, 128, 64)
    for level in range(1, layers):
        x = downsample(min(2**level, 8) * f, name=f"down{level + 1}")(x)  # (bs, 64, 64, 128), (bs, 32, 32, 256)
    x = keras.layers.ZeroPadding2D()(x)  # (bs, 34, 34, 256)
    x = keras.layers.Conv2D(min(2**layers, 8) * f, 4, strides=1, kernel_initializer=_init(),
                            use_bias=False)(x)  # (bs, 31, 31, 512)
    x = InstanceNorm()(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.ZeroPadding2D()(x)  # (bs, 33, 33, 512)
    x = keras.layers.Conv2D(1, 4, strides=1, kernel_initializer=_init())(x)  # (bs, 30, 30, 1)
    outputs = keras.layers.Activation("linear", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)

