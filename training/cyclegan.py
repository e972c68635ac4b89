"""The CycleGAN's state (four networks, their optimizers, two pools, the step) and its update step.

G translates T1 -> T2 (domain A -> B), F translates T2 -> T1; D_X judges T1
images, D_Y judges T2 images.
"""

import tensorflow as tf

import losses
from models.networks import build_discriminator, build_generator
from models.serving import air_mask
from training.config import ModelConfig
from training.pool import ImagePool
from training.schedule import LinearDecay

keras = tf.keras

NETWORKS = ("generator_g", "generator_f", "discriminator_x", "discriminator_y")


def network_air(images: tf.Tensor) -> tf.Tensor:
    """[batch, H, W, 1] images in [-1, 1] -> their air masks (bool, same shape), the rule of inference."""
    unit = (images[..., 0] + 1.0) / 2.0
    return tf.map_fn(air_mask, unit, fn_output_signature=tf.bool)[..., tf.newaxis]


def zero_air(outputs: tf.Tensor, air: tf.Tensor | None) -> tf.Tensor:
    """Outputs in [-1, 1] set to -1 (unit 0) in the sources' air; unchanged without a mask."""
    return outputs if air is None else tf.where(air, -1.0, outputs)


class CycleGAN(tf.Module):
    """Everything a checkpoint must hold to resume a run exactly where it stopped.

    The networks' width is config.filters: 64 is the design (114,344,708 parameters); tests of the
    loop's mechanics use a narrow copy of the same architecture.
    """

    def __init__(self, config: ModelConfig, total_steps: int, decay_start: int, seed: int = 0):
        super().__init__(name="cyclegan")
        self.config = config
        self._arguments = (config, total_steps, decay_start, seed)
        filters = config.filters
        # The same on every replica: each adds 1 and the first replica's value is kept.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.generator_g = build_generator("generator_g", filters)  # T1 -> T2
        self.generator_f = build_generator("generator_f", filters)  # T2 -> T1
        self.discriminator_x = build_discriminator("discriminator_x", filters, config.discriminator_layers)  # judges T1
        self.discriminator_y = build_discriminator("discriminator_y", filters, config.discriminator_layers)  # judges T2
        self.schedule = LinearDecay(config.lr, total_steps, decay_start)
        self.inversion_schedule = LinearDecay(config.inversion_prior, config.inversion_prior_steps, 0)
        self.optimizers = {name: self._optimizer(name) for name in NETWORKS}
        for name in NETWORKS:  # build now so that a restore fills the slots instead of deferring
            self.optimizers[name].build(self.network(name).trainable_variables)
        self.pool_a = ImagePool(config.pool_size, seed=seed, name="pool_a")  # fake T1 images
        self.pool_b = ImagePool(config.pool_size, seed=seed + 1, name="pool_b")  # fake T2 images

    @property
    def current_step(self) -> int:
        """The global step as a Python int (also when `step` is mirrored over replicas)."""
        return int(self.step.numpy())

    def network(self, name: str) -> keras.Model:
        return getattr(self, name)

    def _optimizer(self, name: str):
        # The rate is read from the global step, not the optimizer's own counter: a float16 loss-scale
        # optimizer skips overflowing steps without counting them, which would shift its curve.
        ratio = self.config.discriminator_lr_ratio if name.startswith("discriminator") else 1.0
        optimizer = keras.optimizers.Adam(learning_rate=lambda: self.learning_rate() * ratio,
                                          beta_1=self.config.beta_1)
        if self.config.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def dropout_states(self) -> list[tf.Variable]:
        """The random states of the generators' dropout layers, which Keras leaves out of checkpoints."""
        return [
            layer.seed_generator.state.value
            for name in ("generator_g", "generator_f")
            for layer in self.network(name)._flatten_layers()
            if isinstance(layer, keras.layers.Dropout)
        ]

    def twin(self) -> "CycleGAN":
        """A CycleGAN of the same configuration with its own variables in host memory, outside any distribution
        strategy: the staging copy that a background checkpoint is written from (on a GPU, the copy is a
        device-to-host transfer and costs no device memory)."""
        with tf.device("/cpu:0"):
            return CycleGAN(*self._arguments)

    def state(self) -> list:
        """Every variable a checkpoint holds, in an order that is the same for every CycleGAN of one
        configuration: what a background save copies from the live model into its twin."""
        return [
            self.step,
            *(weight for name in NETWORKS for weight in self.network(name).weights),
            *(variable for name in NETWORKS for variable in self.optimizers[name].variables),
            self.pool_a.images, self.pool_a.count, self.pool_b.images, self.pool_b.count,
            *self.dropout_states(),
        ]

    def checkpoint(self) -> tf.train.Checkpoint:
        """The object graph written to disk; outside tools read the global step under `step`."""
        return tf.train.Checkpoint(
            step=self.step,
            **{name: self.network(name) for name in NETWORKS},
            **{f"optimizer_{name}": self.optimizers[name] for name in NETWORKS},
            pool_a=self.pool_a,
            pool_b=self.pool_b,
            dropout_states=self.dropout_states(),
        )

    def learning_rate(self) -> tf.Tensor:
        """The generators' rate at the current step (the discriminators' is discriminator_lr_ratio times it)."""
        return self.schedule(self.step)

    def _apply(self, tape, network_losses: dict[str, tf.Tensor], name: str):
        """One optimizer update of network `name` from its (scaled) loss in `network_losses`."""
        variables = self.network(name).trainable_variables
        grads = tape.gradient(network_losses[name], variables)
        self.optimizers[name].apply_gradients(zip(grads, variables))

    def train_step(self, real_a: tf.Tensor, real_b: tf.Tensor) -> dict[str, tf.Tensor]:
        """One update of G and F, then of D_X and D_Y on pooled fakes, on this replica's part of the batch.

        Every loss is averaged per example over the global batch (tf.nn.compute_average_loss), so each
        replica returns its share and the replicas' gradients and losses sum to those of one device
        taking the whole batch.
        """
        config = self.config
        context = tf.distribute.get_replica_context()
        global_batch = real_a.shape[0] * context.num_replicas_in_sync

        def average(per_example):
            return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)

        f32 = lambda t: tf.cast(t, tf.float32)  # noqa: E731 - mixed-precision outputs to loss precision
        real_a, real_b = f32(real_a), f32(real_b)
        prior = config.inversion_prior > 0
        source_air_a, source_air_b = (network_air(real) if config.train_air_mask or prior else None
                                      for real in (real_a, real_b))
        air_a, air_b = (source_air_a, source_air_b) if config.train_air_mask else (None, None)

        def translate(generator, images, air):
            """The generator's output, -1 (unit 0) in the source's air with --train_air_mask, as at inference."""
            return zero_air(f32(generator(images, training=True)), air)

        with tf.GradientTape(persistent=True) as tape:
            fake_b = translate(self.generator_g, real_a, air_a)
            cycled_a = translate(self.generator_f, fake_b, air_a)
            fake_a = translate(self.generator_f, real_b, air_b)
            cycled_b = translate(self.generator_g, fake_a, air_b)
            out = {
                "g/adversarial": average(losses.generator_adversarial(
                    f32(self.discriminator_y(fake_b, training=True)), config.gan_loss
                )),
                "f/adversarial": average(losses.generator_adversarial(
                    f32(self.discriminator_x(fake_a, training=True)), config.gan_loss
                )),
                "cycle/a_to_b_to_a": average(losses.cycle(real_a, cycled_a, config.lambda_cycle)),
                "cycle/b_to_a_to_b": average(losses.cycle(real_b, cycled_b, config.lambda_cycle)),
            }
            if config.lambda_identity > 0:
                same_b = translate(self.generator_g, real_b, air_b)
                same_a = translate(self.generator_f, real_a, air_a)
                out["g/identity"] = average(losses.identity(real_b, same_b, config.lambda_cycle,
                                                            config.lambda_identity))
                out["f/identity"] = average(losses.identity(real_a, same_a, config.lambda_cycle,
                                                            config.lambda_identity))
            if prior:
                weight = self.inversion_schedule(self.step)
                out["g/inversion_prior"] = average(losses.inversion_prior(real_a, fake_b, source_air_a, weight))
                out["f/inversion_prior"] = average(losses.inversion_prior(real_b, fake_a, source_air_b, weight))
            # One objective for both generators, as in the original: each network's gradient
            # only sees the terms that depend on it.
            generator_total = tf.add_n(list(out.values()))
            out["generators/total"] = generator_total
            scaled = {name: self._scaled(name, generator_total) for name in ("generator_g", "generator_f")}
        for name in ("generator_g", "generator_f"):
            self._apply(tape, scaled, name)
        del tape

        pooled_a = self._pooled(self.pool_a, tf.stop_gradient(fake_a), context)
        pooled_b = self._pooled(self.pool_b, tf.stop_gradient(fake_b), context)
        with tf.GradientTape(persistent=True) as tape:
            out["d_x/total"] = average(losses.discriminator_adversarial(
                f32(self.discriminator_x(real_a, training=True)),
                f32(self.discriminator_x(pooled_a, training=True)),
                config.gan_loss,
            ))
            out["d_y/total"] = average(losses.discriminator_adversarial(
                f32(self.discriminator_y(real_b, training=True)),
                f32(self.discriminator_y(pooled_b, training=True)),
                config.gan_loss,
            ))
            scaled = {
                "discriminator_x": self._scaled("discriminator_x", out["d_x/total"]),
                "discriminator_y": self._scaled("discriminator_y", out["d_y/total"]),
            }
        for name in ("discriminator_x", "discriminator_y"):
            self._apply(tape, scaled, name)
        del tape
        self.step.assign_add(1)
        return out

    def _pooled(self, pool: ImagePool, fakes: tf.Tensor, context) -> tf.Tensor:
        """This replica's part of the pool's answer to the fakes of every replica (one pool, the same everywhere)."""
        replicas = context.num_replicas_in_sync
        if replicas == 1:
            return pool.query(fakes, self.step)
        local = fakes.shape[0]
        gathered = tf.ensure_shape(context.all_gather(fakes, axis=0), (local * replicas, *fakes.shape[1:]))
        answered = pool.query(gathered, self.step)  # [global batch, ...], the same on every replica
        first = tf.cast(context.replica_id_in_sync_group, tf.int32) * local
        return answered[first:first + local]

    def _scaled(self, name: str, loss: tf.Tensor) -> tf.Tensor:
        """Loss scaling for float16 (the optimizer unscales the gradients); identity otherwise."""
        optimizer = self.optimizers[name]
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return optimizer.scale_loss(loss)
        return loss

    def compiled_step(self, xla: bool, strategy: tf.distribute.Strategy | None = None):
        """The train step as one graph (with or without XLA) running on every replica of `strategy`
        (default: the current one); returns each loss reduced over the replicas once."""
        strategy = strategy or tf.distribute.get_strategy()

        def step(real_a, real_b):
            per_replica = strategy.run(self.train_step, args=(real_a, real_b))
            return {name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                    for name, value in per_replica.items()}

        return tf.function(step, jit_compile=xla)
