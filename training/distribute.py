"""Which tf.distribute strategy a run uses, and its input split over the replicas.

`--strategy=auto` picks MultiWorkerMirroredStrategy when TF_CONFIG (or a SLURM allocation) names
more than one worker, MirroredStrategy when there is more than one GPU (or `--cpu_replicas` > 1),
and otherwise TensorFlow's default single-device strategy, which is exactly the loop without
tf.distribute.
"""

import json
import os

import tensorflow as tf


def split_cpu(replicas: int) -> None:
    """Splits the CPU into `replicas` logical devices, so that MirroredStrategy runs without GPUs.

    Must happen before TensorFlow initialises its devices; asking again for the same split is fine.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as error:  # devices already initialised (an earlier run in this process)
        present = len(tf.config.list_logical_devices("CPU"))
        if present != replicas:
            raise ValueError(f"--cpu_replicas={replicas}: TensorFlow already started with {present} CPU device(s) "
                             "in this process") from error


def cluster_workers() -> int:
    """How many workers TF_CONFIG or a SLURM allocation names (1 when neither does)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = len(config.get("cluster", {}).get("worker", []))
    if workers:
        return workers
    return int(os.environ.get("SLURM_NTASKS", "1") or 1)


def make_strategy(name: str, cpu_replicas: int) -> tf.distribute.Strategy:
    """The strategy `--strategy` names (see the module docstring for `auto`).

    Called before anything starts TensorFlow's devices: MultiWorkerMirroredStrategy must configure its
    collectives first, and the CPU split must precede device initialisation.
    """
    gpus = tf.config.list_physical_devices("GPU")  # does not start the devices
    if name == "auto":
        if cluster_workers() > 1:
            name = "multi_worker"
        elif len(gpus) > 1 or cpu_replicas > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ and "SLURM_JOB_ID" in os.environ:
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
        else:
            resolver = None  # TF_CONFIG
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        if cpu_replicas > 1:
            raise ValueError("--cpu_replicas applies to one machine; multi_worker uses one CPU device per worker")
        return strategy
    if cpu_replicas > 1:
        split_cpu(cpu_replicas)
    if name == "one_device":
        return tf.distribute.get_strategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def describe(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        kind = "MultiWorkerMirroredStrategy"
    elif isinstance(strategy, tf.distribute.MirroredStrategy):
        kind = "MirroredStrategy"
    else:
        kind = "the default single-device strategy"
    return f"{kind}, {strategy.num_replicas_in_sync} replica(s)"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (every process but the non-chief workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def any_worker(strategy: tf.distribute.Strategy):
    """A function flag -> whether any worker's flag is set: every worker calls it at the same step, so that a
    signal on one worker stops all of them there (they save together, as TensorFlow requires)."""

    @tf.function
    def any_flag(flag):
        per_replica = strategy.run(lambda value: tf.cast(value, tf.int32), args=(flag,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None) > 0

    return lambda flag: bool(any_flag(tf.constant(flag)))


def replica_batches(dataset_for, global_batch: int, strategy: tf.distribute.Strategy, skip: int):
    """The distributed batches of one epoch from global step `skip` on.

    `dataset_for(batch_size, skip)` gives the epoch's stream of batches of a size. Per-replica batch j of
    that stream belongs to global step j // replicas and replica j % replicas, so N replicas of batch
    B / N see exactly the images one device sees with batch B; each input pipeline (one per worker)
    keeps only the batches of its own replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return iter(dataset_for(global_batch, skip))

    def pipeline(context: tf.distribute.InputContext):
        per_replica = context.get_per_replica_batch_size(global_batch)
        dataset = dataset_for(per_replica, skip * replicas)
        if context.num_input_pipelines > 1:
            local = replicas // context.num_input_pipelines
            mine = context.input_pipeline_id
            dataset = dataset.enumerate().filter(lambda j, batch: (j % replicas) // local == mine)
            dataset = dataset.map(lambda j, batch: batch)
        return dataset

    return iter(strategy.distribute_datasets_from_function(pipeline))
