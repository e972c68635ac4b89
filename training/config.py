"""What a training run is: the model/optimisation config, the run config, and the data configs.

Each field is a flag of train.py (rundir/config.py defines them), and flags.txt in the run's
directory holds them all, so evaluate.py and export.py read the data the run trained on.
"""

import dataclasses

from data.augment import AugmentOptions
from data.datasets import DataSpec
from models.networks import DESIGN_FILTERS, DESIGN_LAYERS
from rundir import config
from rundir.config import option


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The objective and its optimisation (the published defaults)."""

    lr: float = option(2e-4, "Adam learning rate of the generators (before the decay).", lower=0.0)
    discriminator_lr_ratio: float = option(
        1.0, "The discriminators' Adam learning rate as a multiple of --lr, on the same schedule (above 1: the "
        "discriminators learn faster than the generators, the two time-scale update rule).", lower=0.0)
    beta_1: float = option(0.5, "Adam beta_1.", lower=0.0, upper=1.0)
    lambda_cycle: float = option(10.0, "Weight of the cycle-consistency L1 loss.", lower=0.0)
    lambda_identity: float = option(0.5, "Identity L1 weight, as a fraction of lambda_cycle (0 disables).", lower=0.0)
    train_air_mask: bool = option(
        False, "Zero the generators' outputs where their source is air in training too, as translate.py, evaluate.py "
        "and exports do by default (the border-connected background), so that every loss judges the head only and a "
        "generator need not keep dark tissue dark to keep the air dark.")
    inversion_prior: float = option(
        0.0, "Weight of an L1 pull of each generator's output toward its own source with the head's intensities "
        "reversed (unit x -> 1 - x inside the head, air 0): the prior that T1 and T2 order the brain's tissues in "
        "reverse (CSF dark in T1, bright in T2). It uses no paired image, fades linearly to 0 at "
        "--inversion_prior_steps, and then the objective is the CycleGAN's alone (0 disables).", lower=0.0)
    inversion_prior_steps: int = option(400, "Steps over which --inversion_prior fades to 0.", lower=1)
    gan_loss: str = option("lsgan", "Adversarial loss: least squares or binary cross-entropy with logits.",
                           choices=("lsgan", "bce"))
    filters: int = option(
        DESIGN_FILTERS, "The networks' first-level width: 64 is the design (114,344,708 parameters); a smaller width is the same "
        "architecture narrowed, for quick experiments and the tests of the tools (evaluate.py, translate.py and "
        "export.py read it from the run's flags).", lower=1, structural=True)
    discriminator_layers: int = option(
        DESIGN_LAYERS, "The PatchGANs' stride-2 levels (junyanz's n_layers_D): 3 is the design's 70x70 patches; 4 judges "
        "142x142 patches (each discriminator 6,958,849 parameters instead of 2,763,521), 5 286x286; larger patches "
        "see a slice's anatomy whole (the neck, say) where a small patch may accept tissues in either order.",
        lower=1, upper=6, structural=True)
    pool_size: int = option(50, "Image-history pool size per domain (0 disables).", lower=0, structural=True)
    precision: str = option("float32", "Compute precision (mixed_float16 uses loss scaling).",
                            choices=("float32", "mixed_bfloat16", "mixed_float16"), structural=True)
    xla: str = option("auto", "Compile the step with XLA; auto: on GPU only (measured slower on CPU, see BENCHMARKS.md).",
                      choices=("auto", "true", "false"), resumable=True)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How long the run is, how it is seeded, and what it writes how often."""

    epochs: int = option(200, "Training epochs.", lower=1, resumable=True)
    decay_epoch: int | None = option(None, "Epoch at which the linear learning-rate decay to 0 starts (default: "
                                     "epochs // 2).", lower=0, resumable=True)
    steps_per_epoch: int | None = option(None, "Steps per epoch (default: the larger domain's slice count // "
                                         "batch_size).", lower=1)
    batch_size: int = option(1, "Images per domain per step: the global batch, split evenly over the replicas.",
                             lower=1)
    strategy: str = option("auto", "tf.distribute strategy: auto (multi_worker when TF_CONFIG or SLURM names several "
                           "workers, mirrored with several GPUs or --cpu_replicas > 1, else one_device), one_device, "
                           "mirrored or multi_worker.", choices=("auto", "one_device", "mirrored", "multi_worker"),
                           resumable=True)
    cpu_replicas: int = option(1, "Split the CPU into this many logical devices, so that mirrored runs (and is "
                               "tested) without GPUs.", lower=1, resumable=True)
    seed: int = option(0, "Seed for weights, data order, augmentation and pools.", lower=0)
    deterministic: bool = option(False, "Reproducible runs: TensorFlow op determinism (how exact: "
                                 "docs/checkpoints.md, Reproducibility).", resumable=True)
    save_every_steps: int | None = option(None, "Also checkpoint every this many steps (always at each epoch's end "
                                          "and on Ctrl-C/SIGTERM).", lower=1, resumable=True)
    keep_checkpoints: int = option(3, "Newest checkpoints kept (each holds the networks, optimizers and pools: about "
                                   "1.4 GB).", lower=1, resumable=True)
    background_checkpoints: bool = option(
        True, "Write checkpoints in a background thread from a copy of the state taken in a fraction of a second "
        "(costs that copy in memory, about 1.5 GB); false: the loop waits for each write. Single-device runs only: "
        "mirrored and multi_worker runs always wait.", resumable=True)
    keep_weights_every_epochs: int | None = option(
        None, "Also keep a weights-only snapshot (networks and step, about 0.45 GB) every this many epochs in "
        "<logdir>/weights, all kept; evaluate.py, translate.py and export.py read one with --checkpoint.",
        lower=1, resumable=True)
    log_every_steps: int = option(10, "Write scalar summaries every this many steps.", lower=1, resumable=True)
    profile_steps: str | None = option(None, "Write a TensorBoard profiler trace of steps A to B (\"A,B\", 1-based, "
                                       "inclusive) to the logdir (TensorBoard's Profile tab).", resumable=True)
    summary_images: int = option(3, "Fixed samples shown as translation grids in TensorBoard each epoch (0: none).",
                                 lower=0, resumable=True)


CONFIGS = (ModelConfig, RunConfig, DataSpec, AugmentOptions)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything train.py's flags say, one config per concern."""

    model: ModelConfig = ModelConfig()
    run: RunConfig = RunConfig()
    data: DataSpec = DataSpec()
    augment: AugmentOptions = AugmentOptions()

    @classmethod
    def from_values(cls, values) -> "TrainConfig":
        """From absl FLAGS, a dict of values, or a run's saved flags (strings)."""
        return cls(*(config.from_values(kind, values) for kind in CONFIGS))

    def as_flags(self) -> dict[str, object]:
        return {name: value for part in (self.model, self.run, self.data, self.augment)
                for name, value in config.as_flags(part).items()}

    def replace(self, **flag_values) -> "TrainConfig":
        """A copy with some flags changed, by flag name (for tests and tools)."""
        return TrainConfig.from_values({**self.as_flags(), **flag_values})


def define_flags() -> None:
    """train.py's flags, one per config field (data.flags defines the reading flags on import)."""
    import data.flags  # noqa: F401 - the reading flags every tool shares

    config.define_flags(ModelConfig)
    config.define_flags(RunConfig)
    data.flags.define_dataset_flags()
    data.flags.define_augment_flags()


FLAG_NAMES = tuple(name for kind in CONFIGS for name in config.flag_names(kind))
STRUCTURAL_FLAGS = tuple(name for kind in CONFIGS for name in config.structural_flags(kind))
RESUMABLE_FLAGS = tuple(name for kind in CONFIGS for name in config.resumable_flags(kind))
