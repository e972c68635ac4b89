"""Linear learning-rate decay computed from the step, so a resumed run continues the same curve."""

import tensorflow as tf

keras = tf.keras


@keras.utils.register_keras_serializable(package="mri_cyclegan")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Constant `initial` until `decay_start` steps, then linear to 0 at `total_steps`."""

    def __init__(self, initial: float, total_steps: int, decay_start: int):
        if not 0 <= decay_start <= total_steps:
            raise ValueError(f"decay must start within the run: 0 <= {decay_start} <= {total_steps}")
        self.initial = initial
        self.total_steps = total_steps
        self.decay_start = decay_start

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decay_steps = max(self.total_steps - self.decay_start, 1)
        remaining = (self.total_steps - step) / decay_steps
        fraction = tf.clip_by_value(remaining, 0.0, 1.0)
        return self.initial * tf.where(step < self.decay_start, 1.0, fraction)

    def get_config(self):
        return {"initial": self.initial, "total_steps": self.total_steps, "decay_start": self.decay_start}
