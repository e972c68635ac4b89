"""Where a run keeps its checkpoints, how a tool finds the newest one, and a cheap check that one is whole.

A checkpoint `<dir>/ckpt-<step>` is an index file (`.index`) and data shards (`.data-<i>-of-<n>`);
the `checkpoint` state file lists the ones kept. A damaged checkpoint is set aside by renaming its
files with CORRUPT_SUFFIX, never deleted.
"""

import glob
import os
import re

import numpy as np
import tensorflow as tf

CHECKPOINT_DIR = "checkpoints"
WEIGHTS_DIR = "weights"  # weights-only snapshots (--keep_weights_every_epochs), all kept
CORRUPT_SUFFIX = ".corrupt"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_SHARD = re.compile(r"\.data-\d{5}-of-\d{5}$")
_FILE = re.compile(r"(?P<prefix>ckpt-\d+)\.(index|data-\d{5}-of-\d{5})$")


def checkpoint_dir(logdir: str) -> str:
    return os.path.join(logdir, CHECKPOINT_DIR)


def weights_dir(logdir: str) -> str:
    return os.path.join(logdir, WEIGHTS_DIR)


def checkpoint_step(path: str) -> int:
    """The step in a checkpoint's name (`ckpt-<step>`, as the trainer numbers them)."""
    return int(path.rsplit("-", 1)[1])


def checkpoint_files(path: str) -> list[str]:
    """The files of the checkpoint `path` (a prefix such as <dir>/ckpt-12) that exist."""
    return sorted(glob.glob(glob.escape(path) + ".index") + data_shards(path))


def data_shards(path: str) -> list[str]:
    """The checkpoint's data files that exist (not those set aside)."""
    return sorted(name for name in glob.glob(glob.escape(path) + ".data-*-of-*") if _SHARD.search(name))


def checkpoints_newest_first(directory: str) -> list[str]:
    """Every checkpoint in `directory`, newest step first: those the state file lists and those whose files
    are there (a copy may have lost the state file, or the index of one listed)."""
    prefixes = set()
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError):  # an unreadable state file: the files themselves still say
        state = None
    if state is not None:
        prefixes |= {os.path.join(directory, os.path.basename(p)) for p in state.all_model_checkpoint_paths}
    if os.path.isdir(directory):
        prefixes |= {os.path.join(directory, m["prefix"]) for m in map(_FILE.match, os.listdir(directory)) if m}
    return sorted(prefixes, key=checkpoint_step, reverse=True)


def _stored_size(dtype: tf.DType, shape: list[int], value) -> int:
    """Bytes a tensor takes in a data shard: raw values, or for strings varint lengths, their CRC32C and bytes."""
    if dtype != tf.string:
        return int(np.prod(shape, dtype=np.int64)) * dtype.size
    items = [value] if isinstance(value, bytes) else list(np.ravel(value))
    return sum(_varint_size(len(item)) + len(item) for item in items) + 4


def _varint_size(n: int) -> int:
    size = 1
    while n >= 128**size:
        size += 1
    return size


def damage(path: str) -> str | None:
    """Why the checkpoint `path` is not whole (naming the file), or None: index readable, every data shard
    there, and the data as long as the index says. Reads the index, not the weights (their checksums are
    verified when they are restored)."""
    index = path + ".index"
    if not os.path.isfile(index):
        return f"{index} is missing"
    try:
        reader = tf.train.load_checkpoint(path)
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError, IndexError) as error:
        return f"{index} is unreadable ({_first_line(error)})"
    if OBJECT_GRAPH_KEY not in shapes:
        return f"{index} lists no object graph (not a checkpoint of tf.train.Checkpoint)"
    shards = data_shards(path)
    expected_count = int(shards[0].rsplit("-of-", 1)[1]) if shards else 1
    expected = [f"{path}.data-{i:05d}-of-{expected_count:05d}" for i in range(expected_count)]
    missing = [name for name in expected if name not in shards]
    if missing:
        return f"{missing[0]} is missing"
    data = shards[0] if len(shards) == 1 else path + ".data-*"
    written = sum(os.path.getsize(name) for name in shards)
    try:  # strings (the object graph) are stored with their lengths: their size needs their values
        strings = {name: reader.get_tensor(name) for name, dtype in dtypes.items() if dtype == tf.string}
    except (tf.errors.OpError, ValueError, IndexError) as error:
        return f"{data} holds {written:,} bytes, fewer than its index lists ({_first_line(error)})"
    wanted = sum(_stored_size(dtypes[name], shapes[name], strings.get(name)) for name in shapes)
    if written != wanted:
        return f"{data} holds {written:,} bytes, its index {wanted:,}"
    return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def set_aside_files(directory: str) -> list[str]:
    """Files of checkpoints set aside in `directory`."""
    return sorted(glob.glob(os.path.join(glob.escape(directory), "*" + CORRUPT_SUFFIX)))


def set_aside(path: str) -> list[str]:
    """Renames the checkpoint's files with CORRUPT_SUFFIX and drops it from the state file (atomically, as
    TensorFlow writes it); returns the new names."""
    directory = os.path.dirname(path)
    moved = []
    for name in checkpoint_files(path):
        os.replace(name, name + CORRUPT_SUFFIX)
        moved.append(name + CORRUPT_SUFFIX)
    state = tf.train.get_checkpoint_state(directory)
    if state is not None:
        # The timestamps too: CheckpointManager keeps managing (and rotating) only listed paths that have one.
        paths = state.all_model_checkpoint_paths
        timestamps = state.all_model_checkpoint_timestamps or [state.last_preserved_timestamp] * len(paths)
        kept = [(p, t) for p, t in zip(paths, timestamps) if os.path.basename(p) != os.path.basename(path)]
        if not kept:  # it listed only this one: nothing left to name
            os.remove(os.path.join(directory, "checkpoint"))
        else:
            latest = next((p for p, _ in kept if os.path.basename(p) == os.path.basename(state.model_checkpoint_path)),
                          kept[-1][0])
            tf.__internal__.train.update_checkpoint_state(
                directory, latest, all_model_checkpoint_paths=[p for p, _ in kept],
                all_model_checkpoint_timestamps=[t for _, t in kept],
                last_preserved_timestamp=state.last_preserved_timestamp)
    return moved


def runs_below(folder: str, depth: int = 2) -> list[tuple[str, int]]:
    """Runs in subfolders of `folder` (up to `depth` levels) with their newest checkpoint's step."""
    runs = []
    if depth == 0 or not os.path.isdir(folder):
        return runs
    for name in sorted(os.listdir(folder)):
        sub = os.path.join(folder, name)
        if not os.path.isdir(sub) or name in (CHECKPOINT_DIR, WEIGHTS_DIR):
            continue
        found = checkpoints_newest_first(checkpoint_dir(sub))
        runs += [(sub, checkpoint_step(found[0]))] if found else runs_below(sub, depth - 1)
    return runs


def latest_checkpoint(logdir: str) -> str:
    """The newest checkpoint's path; FileNotFoundError (one line, with the fix) when the run has none, naming
    the runs in its subfolders when `logdir` holds some (runs/ for runs/quick)."""
    found = checkpoints_newest_first(checkpoint_dir(logdir))
    if found:
        return found[0]
    runs = runs_below(logdir)
    if runs:
        listed = ", ".join(f"{path} (step {step})" for path, step in runs)
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(logdir)}; runs in its subfolders: {listed}; "
                                f"pass one as --logdir, e.g. --logdir={runs[0][0]}")
    raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(logdir)}; train first with: "
                            f"python train.py --logdir={logdir}")
