"""The run's flags, saved in its logdir as a flagfile, so every later tool agrees with training."""

import os

FLAGFILE = "flags.txt"


def as_text(value) -> str:
    """A flag value as flags.txt writes it (and absl parses it back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def save(logdir: str, values: dict) -> str:
    """Writes `--name=value` lines usable with `--flagfile`; unset (None) flags are left out."""
    path = os.path.join(logdir, FLAGFILE)
    lines = [f"--{name}={as_text(value)}" for name, value in sorted(values.items()) if value is not None]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def load(logdir: str) -> dict[str, str]:
    """The saved flags as strings ({} when the logdir has none)."""
    path = os.path.join(logdir, FLAGFILE)
    if not os.path.exists(path):
        return {}
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("--") and "=" in line:
                name, value = line[2:].split("=", 1)
                values[name] = value
    return values


HISTORY = "flags_history.txt"


def record_changes(logdir: str, step: int, changes: dict[str, tuple[str, str]]) -> str:
    """Appends the flags a resumed run changed (name -> (saved, new)) with the step they apply from."""
    path = os.path.join(logdir, HISTORY)
    with open(path, "a") as f:
        for name, (saved, new) in sorted(changes.items()):
            f.write(f"from step {step}: --{name}={new} (was {saved})\n")
    return path


def load_run(logdir: str, checkpoint: str | None = None) -> dict[str, str]:
    """The saved flags of the run `checkpoint` belongs to (runs/x/checkpoints/ckpt-N or runs/x/weights/...: runs/x),
    else of `logdir`; {} when neither has any."""
    if checkpoint:
        saved = load(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))))
        if saved:
            return saved
    return load(logdir)
