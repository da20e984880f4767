"""utils/train/losses.py's losses against the formulas written out by hand."""
import numpy as np
import pytest
import tensorflow as tf

from utils.train import losses


@pytest.mark.parametrize('jit', [False, True], ids=['eager', 'xla'])
def test_unlabelled_pixels_add_nothing_to_the_loss_or_its_gradient(jit):
    """Also XLA-compiled, as the training step is with jit_compile."""
    classes = 3
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(classes), size=(2, 3, 4)).astype(np.float32)
    labels = rng.integers(0, classes, (2, 3, 4)).astype(np.int32)
    unlabelled = np.zeros(labels.shape, bool)
    unlabelled[0, 1, :3] = unlabelled[1, 2, 3] = True
    labels[unlabelled] = classes            # utils.data.labels.unlabelled_index(config)
    variable = tf.Variable(probs)

    def loss_and_gradient():
        with tf.GradientTape() as tape:
            loss = losses.cross_entropy(tf.constant(labels), variable)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, variable)
    if jit:
        loss_and_gradient = tf.function(loss_and_gradient, jit_compile=True)
    loss, grad = loss_and_gradient()
    grad = grad.numpy()

    # By hand: L_b = -1/(H W) sum over labelled pixels of log p[true class];
    # dL_b/dp[c] = -1/(H W p[c]) for the true class of a labelled pixel, else 0.
    pixels = 3 * 4
    expected_loss = np.zeros(2)
    expected_grad = np.zeros_like(probs)
    for b, y, x in np.ndindex(labels.shape):
        if not unlabelled[b, y, x]:
            c = labels[b, y, x]
            expected_loss[b] -= np.log(probs[b, y, x, c]) / pixels
            expected_grad[b, y, x, c] = -1 / (pixels * probs[b, y, x, c])
    np.testing.assert_allclose(loss.numpy(), expected_loss, rtol=1e-5)
    assert (grad[unlabelled] == 0).all()
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5)


def test_a_crop_without_unlabelled_pixels_keeps_the_published_loss():
    # Two pixels, three classes: -(log 0.5 + log 0.25) / 2.
    probs = np.array([[[[0.5, 0.3, 0.2], [0.25, 0.25, 0.5]]]], np.float32)
    loss = losses.cross_entropy(tf.constant([[[0, 1]]]), tf.constant(probs))
    np.testing.assert_allclose(loss.numpy(), [-(np.log(0.5) + np.log(0.25)) / 2], rtol=1e-6)
    # The same crop with its second pixel unlabelled: the mean still over both pixels.
    loss = losses.cross_entropy(tf.constant([[[0, 3]]]), tf.constant(probs))
    np.testing.assert_allclose(loss.numpy(), [-np.log(0.5) / 2], rtol=1e-6)


@pytest.mark.parametrize('kind', ['mse', 'huber'])
def test_regression_is_the_mean_over_valid_pixels_of_the_chosen_loss(kind):
    # Errors 0.5, -2, 3 and a masked 10 m: Huber with delta 1 is 0.5 e^2
    # inside, |e| - 0.5 outside; the masked pixel counts for neither.
    truth = np.zeros((1, 2, 2, 1), np.float32)
    pred = np.array([0.5, -2.0, 3.0, 10.0], np.float32).reshape(1, 2, 2, 1)
    mask = np.array([1, 1, 1, 0], np.float32).reshape(1, 2, 2, 1)
    expected = (0.25 + 4 + 9) / 3 if kind == 'mse' else (0.125 + 1.5 + 2.5) / 3
    loss = losses.regression(tf.constant(truth), tf.constant(pred), tf.constant(mask),
                             kind, delta=1.0)
    np.testing.assert_allclose(loss.numpy(), [expected], rtol=1e-6)
    with pytest.raises(ValueError, match="reg_loss = 'l1'"):
        losses.regression(tf.constant(truth), tf.constant(pred), tf.constant(mask), 'l1')

