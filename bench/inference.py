"""Tiled inference speed: batched windows (utils/predict/) against one
Keras model.predict call per window with Python-side blending (how the
research code tests), on the same tile and networks, in one run.

    python bench/inference.py [--tile 512] [--crop 96] [--batch 8] [--no-correction]
        [--decoder-scale 0.25] [--dae-scale 0.25] [--set NAME=VALUE ...]

Prints windows per second of both, the largest absolute difference of the two
height maps, and last `ratio: <batched / one-at-a-time>` (windows per second).
Untrained networks with random weights: speed does not depend on the weights.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import config  # noqa: E402
import machine  # noqa: E402
from utils import settings  # noqa: E402


def one_window_per_call(mtl, dae, image, crop, stride):
    """The research code's loop: model.predict per window, blend in NumPy."""
    from utils.geo.grid import starts as window_starts
    from utils.predict.windows import gaussian_window
    h, w = image.shape[:2]
    weight = gaussian_window(crop)
    height, total = np.zeros((h, w)), np.zeros((h, w))
    for y in window_starts(h, crop, stride):
        for x in window_starts(w, crop, stride):
            window = image[None, y:y + crop, x:x + crop]
            out = mtl.predict(window, verbose=0)
            pred = out['height']
            if dae is not None:
                parts = [out['height']] + [out[k] for k in ('sem', 'norm', 'edge') if k in out]
                pred = pred - dae.predict(np.concatenate(parts + [window], -1), verbose=0)
            height[y:y + crop, x:x + crop] += pred[0, :, :, 0] * weight
            total[y:y + crop, x:x + crop] += weight
    return height / total


def main():
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('--tile', type=int, default=512, help='square tile side, px')
    p.add_argument('--crop', type=int, default=96, help='window side (multiple of 32)')
    p.add_argument('--batch', type=int, default=8, help='windows per batched call')
    p.add_argument('--decoder-scale', type=float, default=0.25)
    p.add_argument('--dae-scale', type=float, default=0.25)
    p.add_argument('--no-correction', action='store_true', help='MTL only, no DAE')
    args = settings.parse_args(p)

    import keras
    import tensorflow as tf
    from nets import dae as dae_net, mtl as mtl_net
    from utils import distribute
    from utils.geo.grid import starts as window_starts
    from utils.predict import blend, engines

    keras.utils.set_random_seed(0)
    classes = len(config.label_codes)
    strategy = distribute.get_strategy(config)
    with strategy.scope():
        mtl = mtl_net.build_mtl(classes, decoder_scale=args.decoder_scale,
                                backbone_weights=None, dropout=0.0)
        dae = None if args.no_correction else dae_net.build_dae(
            dae_net.input_channels(classes), args.dae_scale, dropout=0.0)
    rng = np.random.RandomState(0)
    # A smooth random image (noise blurred by bilinear up-sampling).
    coarse = rng.rand(args.tile // 16, args.tile // 16, 3).astype(np.float32)
    image = tf.image.resize(coarse[None], (args.tile, args.tile))[0].numpy()
    stride = max(1, args.crop // 6)
    starts = len(window_starts(args.tile, args.crop, stride))
    windows = starts * starts

    def timed(fn):
        fn(image[:args.crop, :args.crop])    # warm-up on one window: tracing, allocations
        start = time.perf_counter()
        result = fn(image)
        return result, time.perf_counter() - start

    predict_fn = engines.tensorflow_fn(mtl, dae, cfg=config, strategy=strategy,
                                       batch_size=args.batch)
    batched, t_batched = timed(lambda img: blend.predict_tile(
        predict_fn, img, args.crop, stride)['height'])
    single, t_single = timed(lambda img: one_window_per_call(mtl, dae, img, args.crop, stride))

    print(f"machine: {machine.describe()}, Keras {keras.__version__}, "
          f"replicas {strategy.num_replicas_in_sync}")
    print(f"tile {args.tile}x{args.tile}, crop {args.crop}, stride {stride}, {windows} windows, "
          f"MTL decoder_scale {args.decoder_scale}"
          + ('' if dae is None else f" + DAE width_scale {args.dae_scale}")
          + f", {classes} classes, jit_compile {config.jit_compile}")
    print(f"one window per model.predict call: {t_single:.2f} s, "
          f"{windows / t_single:.2f} windows/s")
    print(f"batched ({predict_fn.batch_size} windows per call): {t_batched:.2f} s, "
          f"{windows / t_batched:.2f} windows/s")
    print(f"max |height difference|: {np.abs(batched - single).max():.3g} m")
    print(f"ratio: {t_single / t_batched:.2f}")


if __name__ == '__main__':
    sys.exit(settings.run_main(main))
