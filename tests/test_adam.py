"""utils/train/adam.Adam, the fused update, against Adam written out in
float64 and against keras.optimizers.Adam."""
import keras
import numpy as np
import tensorflow as tf

from utils.train.adam import Adam

U = 2.0 ** -24      # float32 unit roundoff
STEPS = 3


def reference(w, grads, lr, beta_1, beta_2, epsilon):
    """Adam in float64, with 1 - beta_2 as the kernel forms it (in float32
    from float32 beta_2): (the weights, the sum of each step's |update|)."""
    w, m, v, moved = w.astype(np.float64), 0.0, 0.0, 0.0
    one_minus_b1 = float(np.float32(1) - np.float32(beta_1))
    one_minus_b2 = float(np.float32(1) - np.float32(beta_2))
    for t, g in enumerate(grads, 1):
        m = m + (g - m) * one_minus_b1
        v = v + (g * g - v) * one_minus_b2
        alpha = lr * np.sqrt(1 - float(np.float32(beta_2)) ** t) / \
            (1 - float(np.float32(beta_1)) ** t)
        update = alpha * m / (np.sqrt(v) + epsilon)
        w, moved = w - update, moved + np.abs(update)
    return w, moved


def run(optimizer, w, grads):
    variable = tf.Variable(w)
    optimizer.build([variable])
    for g in grads:
        optimizer.apply_gradients([(tf.constant(g), variable)])
    return variable.numpy(), optimizer


def test_the_fused_step_is_adams_in_float64_within_float32_rounding():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 64)).astype(np.float32)
    # gradients of mixed scale and sign, some near zero
    grads = [(rng.normal(size=w.shape) * 10.0 ** rng.integers(-6, 1, w.shape)).astype(np.float32)
             for _ in range(STEPS)]
    lr, beta_1, beta_2, epsilon = 1e-2, 0.9, 0.999, 1e-7
    found, optimizer = run(Adam(lr, beta_1, beta_2, epsilon), w, grads)
    expected, moved = reference(w, grads, lr, beta_1, beta_2, epsilon)
    # Each step's update is m and v (two float32 operations each, on values
    # themselves rounded before), alpha (a power, a sqrt, a division) and
    # the quotient: within 20 roundings of its size, 20u |update|; writing
    # w back rounds by u |w|. Summed over the steps:
    bound = 20 * U * moved + STEPS * U * np.abs(w).max() * 1.01
    assert np.all(np.abs(found - expected) <= bound)
    # it is not blind: a learning rate 0.1% off, or one step missing, is seen
    for lr_off, steps in ((1.001 * lr, grads), (lr, grads[:-1])):
        assert np.any(np.abs(found - reference(w, steps, lr_off, beta_1, beta_2,
                                               epsilon)[0]) > bound)
    assert int(optimizer.iterations.numpy()) == STEPS


def test_it_keeps_keras_adams_variables_and_falls_back_for_sparse_gradients():
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    grads = [np.full_like(w, 0.5)]
    _, fused = run(Adam(1e-3), w, grads)
    _, plain = run(keras.optimizers.Adam(1e-3), w, grads)
    # the same slots under the same names: checkpoints read either way
    assert [v.path.split('/', 1)[1] for v in fused.variables] == \
        [v.path.split('/', 1)[1] for v in plain.variables]
    for a, b in zip(fused.variables, plain.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5)     # 1 - beta_2's rounding
    # an IndexedSlices gradient (an embedding's) takes Keras' own update
    variable = tf.Variable(w)
    optimizer = Adam(1e-3)
    optimizer.build([variable])
    optimizer.apply_gradients([(tf.IndexedSlices(tf.ones([1, 4]), tf.constant([1]), [3, 4]),
                                variable)])
    moved = np.abs(variable.numpy() - w).max(axis=1)
    assert moved[1] > 0 and moved[0] == moved[2] == 0
