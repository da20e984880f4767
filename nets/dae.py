"""Stage 2: the denoising autoencoder, a U-Net that predicts the MTL's height
error from the MTL's outputs and the image. Refined height = MTL height - noise
(refine).
"""
import keras
from keras import layers

from utils.model import heads

ENCODER_WIDTHS = (64, 128, 256, 512)
FIRST_CONV = 'enc1_conv1'   # the one layer that reads the input's channels
BRIDGE_WIDTH = 1024


def _double_conv(x, width, name):
    for i in (1, 2):
        x = layers.Conv2D(width, 3, padding='same', activation='relu', name=f'{name}_conv{i}')(x)
    return x


def input_parts(num_classes, image_channels=3, **switches):
    """(name, channels) of each part of the DAE input, in order: the MTL
    outputs of the heads switched on (utils/model/heads.py; `switches` as for
    nets.mtl.build_mtl), then the image."""
    return [(h.name, h.out_channels(num_classes)) for h in heads.select(**switches)] + \
        [('image', image_channels)]


def input_channels(num_classes, image_channels=3, **switches):
    """Channels of the DAE input (input_parts)."""
    return sum(c for _, c in input_parts(num_classes, image_channels, **switches))


def build_dae(in_channels, width_scale=1.0, dropout=0.5):
    """The U-Net; inputs must have sides divisible by 16."""
    def width(base):
        return max(1, round(base * width_scale))

    inputs = keras.Input((None, None, in_channels), name='dae_input')
    x, skips = inputs, []
    for level, base in enumerate(ENCODER_WIDTHS, start=1):
        x = _double_conv(x, width(base), f'enc{level}')
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f'enc{level}_pool')(x)
    x = _double_conv(x, width(BRIDGE_WIDTH), 'bridge')
    for level, base in zip(range(4, 0, -1), reversed(ENCODER_WIDTHS)):
        x = layers.Conv2DTranspose(width(base), 2, strides=2, activation='relu',
                                   name=f'dec{level}_up')(x)
        x = layers.Concatenate(name=f'dec{level}_cat')([x, skips[level - 1]])
        x = _double_conv(x, width(base), f'dec{level}')
        x = layers.Dropout(dropout, name=f'dec{level}_drop')(x)
    noise = layers.Conv2D(1, 3, padding='same', dtype='float32', name='noise')(x)
    return keras.Model(inputs, noise, name='dsmnet_dae')


def assemble_input(mtl_outputs, image):
    """The DAE input: the MTL's outputs in the order of utils/model/heads.py (height,
    semantics, normals, edges, those the MTL has), then the image, stacked."""
    import keras.ops as ops
    parts = [mtl_outputs[k] for k in heads.NAMES if k in mtl_outputs]
    return ops.concatenate([ops.cast(p, image.dtype) for p in parts] + [image], axis=-1)


def refine(dae, mtl_outputs, image, training=False):
    """The refined height [n, H, W, 1] float32: the MTL's height less the
    noise the DAE predicts from the MTL's outputs and the image."""
    import keras.ops as ops
    noise = dae(assemble_input(mtl_outputs, image), training=training)
    return ops.cast(mtl_outputs[heads.HEIGHT.name], 'float32') - ops.cast(noise, 'float32')
