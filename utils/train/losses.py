"""Per-example losses of both stages.

Each function returns one value per example ([batch]); the training step
averages them over the GLOBAL batch with tf.nn.compute_average_loss, so a
replica holding half the batch contributes half the gradient.
"""
import tensorflow as tf

from nets.dae import refine
from utils.model import heads


def regression(y_true, y_pred, mask, kind='mse', delta=1.0):
    """Mean over valid pixels of each example of the regression loss `kind`
    ('mse', or 'huber' with `delta`: the reg_loss and huber_delta settings)."""
    y_pred = tf.cast(y_pred, tf.float32)
    err = y_pred - y_true
    if kind == 'huber':
        a = tf.abs(err)
        per_pixel = tf.where(a <= delta, 0.5 * tf.square(err), delta * (a - 0.5 * delta))
    elif kind == 'mse':
        per_pixel = tf.square(err)
    else:
        raise ValueError(f"reg_loss = {kind!r}: use 'mse' or 'huber'")
    mask = tf.broadcast_to(mask, tf.shape(per_pixel))
    axes = tf.range(1, tf.rank(per_pixel))
    return tf.reduce_sum(per_pixel * mask, axes) / tf.maximum(tf.reduce_sum(mask, axes), 1.0)


def cross_entropy(labels, probs):
    """Mean categorical cross-entropy per example; labels are class indices.

    An unlabelled pixel (index = classes, utils/data/labels.unlabelled_index) has
    an all-zero one-hot row, so it adds nothing to the loss or its gradient,
    as in the published code; the mean still runs over every pixel of the
    crop, as published, so crops without unlabelled pixels are unchanged."""
    one_hot = tf.one_hot(labels, tf.shape(probs)[-1], dtype=tf.float32)
    probs = tf.clip_by_value(tf.cast(probs, tf.float32), 1e-7, 1.0)
    per_pixel = -tf.reduce_sum(one_hot * tf.math.log(probs), -1)
    return tf.reduce_mean(per_pixel, axis=[1, 2])


def head_loss(head, batch, outputs, cfg):
    """The per-example loss of one head (utils/model/heads.py) on its target."""
    if head.loss == 'cross_entropy':
        return cross_entropy(batch[head.name], outputs[head.name])
    return regression(batch[head.name], outputs[head.name], batch['mask'],
                      cfg.reg_loss, cfg.huber_delta)


def mtl_terms(batch, outputs, cfg):
    """Unweighted per-example loss of every head the MTL has, by term name."""
    return {h.term: head_loss(h, batch, outputs, cfg) for h in heads.HEADS if h.name in outputs}


def mtl_total(terms, cfg):
    """Per example, the sum over the heads in `terms` of each head's weight
    setting times its loss (utils/model/heads.HEADS: w1 height, w2 semantics, w3
    normals, w4 edges)."""
    weights = {h.term: getattr(cfg, h.weight) for h in heads.HEADS}
    return tf.add_n([weights[k] * v for k, v in terms.items()])


def mtl_step(mtl, cfg):
    """(terms_fn, total_fn) that train the MTL."""
    def terms(batch, training):
        return mtl_terms(batch, mtl(batch['image'], training=training), cfg)
    return terms, lambda t: mtl_total(t, cfg)


def dae_step(mtl, dae, cfg):
    """(terms_fn, total_fn) that train the DAE on the frozen MTL's outputs:
    the loss is on the refined height, MTL height - predicted noise."""
    def terms(batch, training):
        predicted = mtl(batch['image'], training=False)
        # Only the DAE's variables are watched, so no gradient enters the MTL.
        height = heads.HEIGHT
        return {height.term: regression(batch[height.name],
                                        refine(dae, predicted, batch['image'], training),
                                        batch['mask'], cfg.reg_loss, cfg.huber_delta)}
    return terms, lambda t: t[heads.HEIGHT.term]
