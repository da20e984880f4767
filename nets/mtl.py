"""Stage 1: the multi-task network (height, semantics, normals, edges).

A DenseNet121 encoder and a five-stage up-sampling decoder with one branch
per task. In 'dsm' mode (the paper) the auxiliary branches feed their
features into the height branch at every stage; in 'full' mode every
branch sees every other branch's features.
"""
import keras
from keras import layers

from utils.model import heads
from utils.errors import BackboneWeightsError

DECODER_WIDTHS = (1024, 512, 256, 64, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DENSENET_FILE = 'densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5'


def task_outputs(num_classes, **switches):
    """(name, channels, final activation) of each head switched on (utils/model/heads.py),
    height first; `switches`: e.g. sem=False, edge=True."""
    return [(h.name, h.out_channels(num_classes), h.activation)
            for h in heads.select(**switches)]


def _up(x, width, name):
    """One decoder up-sampling step: deconv(width, 3, stride 2) -> ReLU."""
    x = layers.Conv2DTranspose(width, 3, strides=2, padding='same', name=f'{name}_deconv')(x)
    return layers.ReLU(name=f'{name}_relu')(x)


def _refine(x, width, dropout, name):
    """Conv(width,3)+ReLU twice, then dropout: the fusion block of a stage."""
    for i in (1, 2):
        x = layers.Conv2D(width, 3, padding='same', activation='relu', name=f'{name}_conv{i}')(x)
    return layers.Dropout(dropout, name=f'{name}_drop')(x)


def _encoder(weights, freeze):
    """DenseNet121 without its top, from `weights` (None, 'imagenet' or a file)."""
    try:
        densenet = keras.applications.DenseNet121(
            include_top=False, weights=weights, input_shape=(None, None, 3))
    except Exception as err:   # no cached file and no network, or an unreadable .h5
        raise BackboneWeightsError(
            f"backbone_weights = {weights!r}: the DenseNet121 weights could not be "
            f"loaded ({err}). Put {DENSENET_FILE} in ~/.keras/models/ (or give its "
            f"path as backbone_weights), or set backbone_weights = None to start "
            f"from random weights.") from err
    densenet.trainable = not freeze
    return densenet


def build_mtl(num_classes, in_channels=3, head_mode='dsm', decoder_scale=1.0,
              backbone_weights=None, dropout=0.5, sync_batchnorm=False,
              freeze_backbone=False, bn_momentum=None, **switches):
    """The MTL as a Keras model: images in [0, 1] -> dict of task outputs.
    `switches` turn heads on or off by name (sem=False, edge=True); the
    others keep their default (utils/model/heads.py)."""
    if head_mode not in ('dsm', 'full'):
        raise ValueError(f"mtl_head_mode = {head_mode!r}: use 'dsm' or 'full'")
    tasks = task_outputs(num_classes, **switches)
    inputs = keras.Input((None, None, in_channels), name='image')
    # ImageNet statistics for RGB; an extra SAR channel is centred on 0.5.
    x = layers.Normalization(mean=IMAGENET_MEAN + (0.5,) * (in_channels - 3),
                             variance=[s * s for s in IMAGENET_STD + (0.5,) * (in_channels - 3)],
                             name='input_norm')(inputs)
    if in_channels != 3:
        x = layers.Conv2D(3, 3, padding='same', name='sar_fuse')(x)
        x = layers.Dropout(dropout, name='sar_drop')(x)
    encoder = _encoder(backbone_weights, freeze_backbone)
    for layer in encoder.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.synchronized = sync_batchnorm   # DenseNet's too: they dominate
            if bn_momentum is not None:
                layer.momentum = bn_momentum
    x = encoder(x)
    x = layers.BatchNormalization(synchronized=sync_batchnorm, name='encoder_bn',
                                  momentum=bn_momentum or 0.99)(x)

    features = {name: x for name, _, _ in tasks}
    for stage, base in enumerate(DECODER_WIDTHS, start=1):
        width = max(1, round(base * decoder_scale))
        ups = {name: _up(features[name], width, f'{name}{stage}') for name, _, _ in tasks}
        if head_mode == 'dsm':
            for name, _, _ in tasks[1:]:
                features[name] = layers.Dropout(dropout, name=f'{name}{stage}_drop')(ups[name])
            fused = layers.Concatenate(name=f'height{stage}_cat')(list(ups.values()))
            features['height'] = _refine(fused, width, dropout, f'height{stage}')
        else:
            shared = layers.Concatenate(name=f'stage{stage}_cat')(list(ups.values()))
            features = {name: _refine(shared, width, dropout, f'{name}{stage}')
                        for name, _, _ in tasks}

    outputs = {name: layers.Conv2D(channels, 3, padding='same', activation=act,
                                   dtype='float32', name=name)(features[name])
               for name, channels, act in tasks}
    return keras.Model(inputs, outputs, name='dsmnet_mtl')
