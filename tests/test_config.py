"""Configs as flags: one field defines the flag, what flags.txt saves and reloads, and what a resume may change."""

import dataclasses

import pytest
from absl import flags

from rundir import config, flagfile
from rundir.config import option
from training.config import FLAG_NAMES, RESUMABLE_FLAGS, STRUCTURAL_FLAGS, ModelConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class ModelConfigWithANewFlag(ModelConfig):
    """BUILD.md's "adding a flag" example: the one line a new flag takes."""

    label_smoothing: float = option(0.0, "Discriminator label smoothing (0: off).", lower=0.0, upper=0.5)


def test_one_field_is_a_flag_with_its_bounds_saved_and_reloaded(tmp_path):
    flag_values = flags.FlagValues()
    config.define_flags(ModelConfigWithANewFlag, flag_values=flag_values)
    flag_values(["prog", "--label_smoothing=0.1", "--gan_loss=bce"])
    parsed = config.from_values(ModelConfigWithANewFlag, flag_values)
    assert parsed == ModelConfigWithANewFlag(label_smoothing=0.1, gan_loss="bce")
    with pytest.raises(flags.IllegalFlagValueError):
        flag_values["label_smoothing"].parse("0.7")
    flagfile.save(str(tmp_path), config.as_flags(parsed))
    assert "--label_smoothing=0.1" in (tmp_path / "flags.txt").read_text().splitlines()
    assert config.from_values(ModelConfigWithANewFlag, flagfile.load(str(tmp_path))) == parsed
    # A run saved before the field existed reads it as its default.
    assert config.from_values(ModelConfigWithANewFlag, {"lr": "0.001"}).label_smoothing == 0.0
    assert "label_smoothing" not in config.resumable_flags(ModelConfigWithANewFlag)


def test_train_flags_are_the_configs_fields():
    assert len(FLAG_NAMES) == len(set(FLAG_NAMES)) == 49
    assert set(STRUCTURAL_FLAGS) == {"filters", "discriminator_layers", "pool_size", "precision"}
    assert set(RESUMABLE_FLAGS) == {"epochs", "decay_epoch", "xla", "deterministic", "save_every_steps",
                                    "keep_checkpoints", "log_every_steps", "summary_images", "strategy",
                                    "cpu_replicas", "profile_steps", "cache_dir", "keep_weights_every_epochs",
                                    "background_checkpoints"}
    assert set(TrainConfig().as_flags()) == set(FLAG_NAMES)


def test_saved_strings_parse_to_typed_values():
    parsed = TrainConfig.from_values({"epochs": "7", "lr": "0.001", "deterministic": "true", "augment_flip": "false",
                                      "layout": "ixi", "decay_epoch": "3", "unknown_flag": "x"})
    assert parsed.run.epochs == 7 and parsed.model.lr == 0.001 and parsed.run.deterministic is True
    assert parsed.augment.flip is False and parsed.data.layout == "ixi" and parsed.run.decay_epoch == 3
    assert TrainConfig.from_values(TrainConfig().replace(batch_size=2).as_flags()).run.batch_size == 2
