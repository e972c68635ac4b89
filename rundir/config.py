"""A run's configuration: frozen dataclasses whose fields are the absl flags and what flags.txt holds.

Each field is declared once with `option(...)`: its default, help text and bounds define the
flag, its name is the flag's name, and its marks say what a resumed run may change:

* structural: shapes the checkpoint's variables; a run cannot resume with another value.
* resumable: may change when a run is resumed (how long it runs, how often it saves or logs);
  the change is recorded in flags_history.txt. Every other field is fixed for the life of a run
  (it decides what the run learns from, or how), so a resume with another value is refused.

Adding a flag is adding one field to one of these dataclasses.
"""

import dataclasses
import types
import typing

from absl import flags


def option(default, help: str, *, lower=None, upper=None, choices=None, structural=False, resumable=False,
           flag: str | None = None):
    """A config field that is also a flag (`flag` names it when it differs from the field's name)."""
    metadata = {"help": help, "lower": lower, "upper": upper, "choices": choices, "structural": structural,
                "resumable": resumable, "flag": flag}
    return dataclasses.field(default=default, metadata=metadata)


def _fields(config_cls) -> list[dataclasses.Field]:
    return [field for field in dataclasses.fields(config_cls) if "help" in field.metadata]


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata["flag"] or field.name


def flag_names(config_cls) -> tuple[str, ...]:
    return tuple(flag_name(field) for field in _fields(config_cls))


def structural_flags(config_cls) -> tuple[str, ...]:
    return tuple(flag_name(field) for field in _fields(config_cls) if field.metadata["structural"])


def resumable_flags(config_cls) -> tuple[str, ...]:
    return tuple(flag_name(field) for field in _fields(config_cls) if field.metadata["resumable"])


def _base_type(config_cls, field: dataclasses.Field) -> type:
    """int for `int`, `int | None` and `Optional[int]`; likewise for str, float and bool."""
    kind = typing.get_type_hints(config_cls)[field.name]
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


def define_flags(config_cls, only: tuple[str, ...] | None = None, flag_values=flags.FLAGS) -> None:
    """Defines one absl flag per field (or per field named in `only`)."""
    for field in _fields(config_cls):
        name = flag_name(field)
        if only is not None and name not in only:
            continue
        meta, kind = field.metadata, _base_type(config_cls, field)
        common = {"name": name, "default": field.default, "help": meta["help"], "flag_values": flag_values}
        if meta["choices"]:
            flags.DEFINE_enum(enum_values=list(meta["choices"]), **common)
        elif kind is bool:
            flags.DEFINE_bool(**common)
        elif kind is int:
            flags.DEFINE_integer(lower_bound=meta["lower"], upper_bound=meta["upper"], **common)
        elif kind is float:
            flags.DEFINE_float(lower_bound=meta["lower"], upper_bound=meta["upper"], **common)
        else:
            flags.DEFINE_string(**common)


def _parse(kind: type, text: str):
    if kind is bool:
        return text.lower() in ("true", "1", "yes")
    return kind(text)


def from_values(config_cls, values):
    """The config from absl FLAGS, a dict of Python values, or saved flags (strings); unknown names are ignored.

    Fields missing from `values`, or None there, keep their defaults.
    """
    if isinstance(values, flags.FlagValues):
        values = {name: values[name].value for name in values}
    kwargs = {}
    for field in _fields(config_cls):
        value = values.get(flag_name(field))
        if value is None:
            continue
        kwargs[field.name] = _parse(_base_type(config_cls, field), value) if isinstance(value, str) else value
    return config_cls(**kwargs)


def as_flags(config) -> dict[str, object]:
    """{flag name: value} of a config, ready for rundir.flagfile.save."""
    return {flag_name(field): getattr(config, field.name) for field in _fields(type(config))}
