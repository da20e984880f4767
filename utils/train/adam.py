"""Keras' Adam with each variable's update as TensorFlow's one fused
ResourceApplyAdam kernel.

Keras 3 builds Adam's update from about fifteen small ops per variable
(casts, powers, the two moments, the step), traced again on every replica:
for DenseNet121's 420 trainable variables on two replicas that tracing was
about 30% of a training run's first step (bench/RESULTS.md, "Time to the
first step"). ResourceApplyAdam computes the same update, in the same
order (m += (g - m)(1 - beta_1), v += (g^2 - v)(1 - beta_2),
var -= alpha m / (sqrt(v) + epsilon), alpha = lr sqrt(1 - beta_2^t) /
(1 - beta_1^t)), on the same slot variables, so checkpoints and weights
files are those of keras.optimizers.Adam. It forms 1 - beta_2 in float32
from beta_2 rounded to float32 (Keras: in float64, then rounded), so
1 - 0.999 becomes 0.00099998713, 1.3e-5 relative from 0.001: the rounding
TensorFlow's Adam had before Keras 3.
"""
import keras
import tensorflow as tf


class Adam(keras.optimizers.Adam):

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(m), v=_handle(v),
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


def _handle(variable):
    """The resource handle of a Keras or TensorFlow variable (inside a
    strategy's update, that of the replica being updated)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle
