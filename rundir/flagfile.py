"""The run's flags, saved in its logdir as a flagfile, so every later tool agrees with training."""

import os

FLAGFILE = "flags.txt"


def save(logdir: str, values: dict) -> str:
    """Writes `--name=value` lines usable with `--flagfile`; unset (None) flags are left out."""
    path = os.path.join(logdir, FLAGFILE)
    lines = []
    for name, value in sorted(values.items()):
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        lines.append(f"--{name}={value}")
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
