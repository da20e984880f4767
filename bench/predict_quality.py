"""Accuracy per unit of compute of the sliding-window prediction: test RMSE,
MAE and mIoU of trained weights for a grid of window steps, window weightings
and test-time flips, and of the precisions predict.py can compute in, with
what each costs, in one run. Trains nothing.

    python bench/predict_quality.py [--split test] [--strides 16,24,32,48,96]
        [--windows gaussian,hann,triangle,trapezoid,flat] [--flips 1,2,4,8] [--correction]
        [--precisions float32,int8] [--max-images N] [--json FILE] [--set NAME=VALUE ...]

Weights: predCheckPointPath (and corrCheckPointPath with --correction) of
dataset_name, with their .json settings, as predict.py takes them. Every
configuration runs utils/predict/blend.py's predict_tile on every image of the
split, scored as test_dsm.py scores (per-image metrics averaged over
images; heights on every valid pixel, so binary datasets' class-1 masking
is not applied). The network sees each distinct window (after its flip)
once per image: configurations that share windows share the network's
outputs, so the grid costs little more than its most expensive member.

Cost: windows the network runs per image (flips included) and per crop area
of a large image ((crop / stride)^2 x flips: the border windows of a small
test image aside, the time of a large image is proportional to it). Speed:
the network's measured windows/s (full batches, timed apart from the grid),
and per configuration the estimated seconds per test image (its windows at
that rate, plus its own measured cutting and blending time). `speed` is
relative to the published configuration (test_stride = cropSize/6, Gaussian,
no flips) on large images: 36 / windows per crop area. `images better`: on
how many images the configuration's RMSE (the MTL's with --correction) is
below the published configuration's, a view of the spread behind a mean.

Precisions: the grid runs on TensorFlow in float32 (the reference, as
test_dsm.py runs it) and, for each of --precisions, on OpenVINO as
predict.py runs it (utils/predict/engines.window_fn: the cached conversion,
int8 quantized and calibrated on the training split); with --correction the
MTL's own height comes from a second conversion without the DAE (the
converted refined network returns the refined height only; the rate is
the refined network's alone, as predict.py runs it). Each such row
gives its RMSE's change from TensorFlow's on the same configuration, and
the RMSE per reference height bin (evaluate/buildings.HEIGHT_BINS, pixels of
the split pooled).
"""
import hashlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import machine  # noqa: E402
from utils import settings  # noqa: E402


class SharedWindows:
    """A predict_fn that runs the network only for windows it has not seen
    (keyed by their bytes) and keeps their outputs until forget()."""

    def __init__(self, predict_fn):
        self.fn, self.batch_size = predict_fn, predict_fn.batch_size
        self.outputs, self.network_seconds = {}, 0.0

    def __call__(self, windows):
        keys = [hashlib.blake2b(w.tobytes(), digest_size=16).digest() for w in windows]
        new = list(dict.fromkeys(k for k in keys if k not in self.outputs))
        if new:
            index = {k: i for i, k in enumerate(keys)}
            start = time.perf_counter()
            out = self.fn(np.stack([windows[index[k]] for k in new]))
            self.network_seconds += time.perf_counter() - start
            for i, key in enumerate(new):
                self.outputs[key] = {name: maps[i] for name, maps in out.items()}
        return {name: np.stack([self.outputs[k][name] for k in keys])
                for name in self.outputs[keys[0]]}

    def forget(self):
        self.outputs.clear()


def network_rate(predict_fn, crop, calls=6):
    """Windows per second of full batches (median of `calls` timed calls)."""
    rng = np.random.default_rng(0)
    batch = rng.random((predict_fn.batch_size, crop, crop, 3), dtype=np.float32)
    predict_fn(batch)   # trace
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predict_fn(batch)
        times.append(time.perf_counter() - start)
    return predict_fn.batch_size / float(np.median(times)), times


class HeightBins:
    """Height errors pooled per reference height bin over a split
    (evaluate/buildings.pixel_sums_by_height)."""

    def __init__(self):
        from utils.evaluate import buildings
        self.buildings = buildings
        self.sums = np.zeros((len(buildings.HEIGHT_BINS), 4))

    def add(self, pred, truth):
        self.sums += self.buildings.pixel_sums_by_height(pred, truth)

    def rmse(self):
        return {name: float(np.sqrt(square / n)) if n else None
                for name, (n, _, square, _) in zip(self.buildings.BIN_NAMES, self.sums)}


def openvino_heights(cfg, precision, mtl_file, dae_file, mtl, dae, strategy):
    """predict_fn of predict.py's OpenVINO engine in `precision`: its
    outputs, and with a DAE the MTL's own height as 'height_mtl' from the
    conversion without it."""
    from utils.model import heads
    from utils.predict import engines
    cfg = cfg.replace(predict_precision=precision)
    outputs = [h.name for h in heads.HEADS if h.output == heads.DEFAULT]
    refined = engines.window_fn('openvino', mtl, dae, cfg=cfg, strategy=strategy,
                                outputs=outputs, files=(mtl_file, dae_file))
    if dae is None:
        return refined
    alone = engines.window_fn('openvino', mtl, None, cfg=cfg, strategy=strategy,
                              outputs=[], files=(mtl_file, None))

    def predict(windows):
        out = refined(windows)
        out['height_mtl'] = alone(windows)['height']
        return out
    predict.batch_size = refined.batch_size
    predict.timed = refined     # the rate is predict.py's: the refined network alone
    return predict


def main():
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('--split', default='test', choices=('test', 'valid', 'train'))
    p.add_argument('--strides', default=None,
                   help='window steps, px (default: cropSize/6, /4, /3, /2, /1)')
    p.add_argument('--windows', default='gaussian,hann,triangle,trapezoid,flat')
    p.add_argument('--flips', default='1,2,4,8', help='numbers of D4 transforms')
    p.add_argument('--correction', action='store_true', help='also the DAE-refined heights')
    p.add_argument('--precisions', default='',
                   help='predict_precisions also run on OpenVINO, e.g. float32,int8')
    p.add_argument('--max-images', type=int)
    p.add_argument('--json', help='write every figure to this file')
    args = settings.parse_args(p)
    sets = {pair.split('=', 1)[0] for pair in args.set}
    from utils.model import weights
    cfg = settings.current()
    mtl_file = weights.WeightsFile(cfg.predCheckPointPath, 'mtl')
    dae_file = weights.WeightsFile(cfg.corrCheckPointPath, 'dae') if args.correction else None
    cfg = weights.adopt(cfg, [mtl_file, dae_file], sets)
    crop = cfg.cropSize
    strides = [int(s) for s in args.strides.split(',')] if args.strides else \
        [crop // d for d in (6, 4, 3, 2, 1)]
    windows = args.windows.split(',')
    flips = [int(f) for f in args.flips.split(',')]

    from utils import distribute
    from utils.data.layouts import find_split
    from utils.data.samples import load_sample
    from utils.evaluate import metrics
    from utils.geo.grid import starts
    from utils.model import networks
    from utils.predict import engines
    from utils.predict.blend import predict_tile
    from utils.predict.flips import with_flips
    strategy = distribute.get_strategy(cfg)
    mtl = networks.trained(mtl_file, cfg, strategy)
    dae = networks.trained(dae_file, cfg, strategy) if args.correction else None
    fns = {'tensorflow float32': engines.tensorflow_fn(mtl, dae, cfg=cfg, strategy=strategy)}
    for precision in filter(None, args.precisions.split(',')):
        fns[f'openvino {precision}'] = openvino_heights(cfg, precision, mtl_file, dae_file,
                                                        mtl, dae, strategy)
    rate_before = {name: network_rate(getattr(fn, 'timed', fn), crop)[0]
                   for name, fn in fns.items()}
    shared = {name: SharedWindows(fn) for name, fn in fns.items()}
    grid = [(e, s, wk, f) for e in fns for s in strides for wk in windows for f in flips]
    samples = find_split(cfg, args.split)[:args.max_images]
    classes = len(cfg.label_codes)
    rows = {c: {'per_image': [], 'confusion': metrics.ConfusionMatrix(classes),
                'bins': HeightBins(), 'blend_seconds': 0.0, 'windows': 0} for c in grid}
    print(f"machine: {machine.describe()}")
    print(f"{cfg.dataset_name} {args.split}: {len(samples)} images, crop {crop}, "
          f"weights {cfg.predCheckPointPath}"
          + (f" + {cfg.corrCheckPointPath}" if dae else ''))
    start = time.perf_counter()
    for index, sample in enumerate(samples):
        data = load_sample(cfg, sample)
        gt = np.asarray(data.height, np.float32)
        for config_key in grid:
            engine, stride, window, flip = config_key
            fn = with_flips(shared[engine], flip, cfg)
            ny = len(starts(gt.shape[0], crop, stride))
            nx = len(starts(gt.shape[1], crop, stride))
            seconds_before, t0 = shared[engine].network_seconds, time.perf_counter()
            out = predict_tile(fn, data.image, crop, stride, window=window)
            row = rows[config_key]
            row['blend_seconds'] += (time.perf_counter() - t0) - (
                shared[engine].network_seconds - seconds_before)
            row['windows'] += ny * nx * flip
            scores = {'': metrics.height_metrics(out['height'], gt)}
            if dae is not None:
                scores['mtl_'] = metrics.height_metrics(out['height_mtl'], gt)
            row['per_image'].append({p + k: v for p, s in scores.items() for k, v in s.items()})
            row['bins'].add(out['height'], gt)
            if 'sem' in out and data.labels is not None:
                row['confusion'].update(np.argmax(out['sem'], -1), data.labels)
        for windows_seen in shared.values():
            windows_seen.forget()
        print(f"  image {index + 1}/{len(samples)} done, {time.perf_counter() - start:.0f} s",
              flush=True)
    rates = {name: (rate_before[name] + network_rate(getattr(fn, 'timed', fn), crop)[0]) / 2
             for name, fn in fns.items()}

    reference = 'tensorflow float32'
    published = (reference, cfg.test_stride, 'gaussian', 1)
    results = []
    for (engine, stride, window, flip), row in rows.items():
        mean = {k: float(np.nanmean([r[k] for r in row['per_image']]))
                for k in row['per_image'][0]}
        per_area = (crop / stride) ** 2 * flip
        windows_per_image = row['windows'] / len(samples)
        results.append(dict(engine=engine, stride=stride, window=window, flips=flip, **mean,
                            miou=row['confusion'].results()['miou'],
                            rmse_by_height=row['bins'].rmse(),
                            windows_per_image=windows_per_image,
                            windows_per_crop_area=per_area,
                            seconds_per_image=windows_per_image / rates[engine]
                            + row['blend_seconds'] / len(samples)))
    by_key = {(r['engine'], r['stride'], r['window'], r['flips']): r for r in results}
    base = by_key.get(published)
    height = 'mtl_rmse' if dae is not None else 'rmse'
    if base:    # the spread: on how many images a configuration beats the published one
        first = rows[published]['per_image']
        for r in results:
            mine = rows[(r['engine'], r['stride'], r['window'], r['flips'])]['per_image']
            r['images_better'] = sum(m[height] < f[height] for m, f in zip(mine, first))
    print(f"\ngrid took {time.perf_counter() - start:.0f} s; network (full batches):")
    for name, fn in fns.items():
        print(f"  {name}: {rates[name]:.1f} windows/s ({rate_before[name]:.1f} before the "
              f"grid), batches of {fn.batch_size}")
    head = ('| stride | window | flips | windows / crop area | speed | windows / image '
            '| s / image |')
    cols = ['rmse', 'mae'] + (['mtl_rmse', 'mtl_mae'] if dae is not None else []) + ['miou']
    names = {'rmse': 'RMSE' + (' (refined)' if dae else ''), 'mae': 'MAE' + (
        ' (refined)' if dae else ''), 'mtl_rmse': 'RMSE (MTL)', 'mtl_mae': 'MAE (MTL)',
        'miou': 'mIoU'}
    print(f"\n{reference}:")
    print(head + ''.join(f' {names[c]} |' for c in cols)
          + (f' {names[height]} vs published | images better |' if base else ''))
    print('|---' * (7 + len(cols) + 2 * bool(base)) + '|')
    for r in sorted((r for r in results if r['engine'] == reference),
                    key=lambda r: (r['windows_per_crop_area'], r[height])):
        line = (f"| {r['stride']} | {r['window']} | {r['flips']} | "
                f"{r['windows_per_crop_area']:.2f} | "
                f"{(crop / published[1]) ** 2 / r['windows_per_crop_area']:.2f}x | "
                f"{r['windows_per_image']:.0f} | {r['seconds_per_image']:.2f} |"
                + ''.join(f" {r[c]:.4f} |" for c in cols))
        if base:
            line += (f" {100 * (r[height] / base[height] - 1):+.2f}% | "
                     f"{r['images_better']}/{len(samples)} |")
        print(line)
    if len(fns) > 1:
        bins = list(results[0]['rmse_by_height'])
        print(f"\nengines and precisions against {reference} on the same configuration "
              f"(RMSE by reference height: {names['rmse']}):")
        print('| engine | stride | window | flips | windows/s | speed |'
              + ''.join(f' {names[c]} | vs {reference} |' for c in cols if c != 'miou')
              + ' mIoU |' + ''.join(f' RMSE {b} |' for b in bins))
        print('|---' * (6 + 2 * (len(cols) - 1) + 1 + len(bins)) + '|')
        for r in sorted(results, key=lambda r: (r['stride'], r['window'], r['flips'],
                                                r['engine'] != reference, r['engine'])):
            ref = by_key[(reference, r['stride'], r['window'], r['flips'])]
            print(f"| {r['engine']} | {r['stride']} | {r['window']} | {r['flips']} | "
                  f"{rates[r['engine']]:.1f} | {rates[r['engine']] / rates[reference]:.2f}x |"
                  + ''.join(f" {r[c]:.4f} | {100 * (r[c] / ref[c] - 1):+.2f}% |"
                            for c in cols if c != 'miou')
                  + f" {r['miou']:.4f} |"
                  + ''.join(' - |' if v is None else f' {v:.3f} |'
                            for v in r['rmse_by_height'].values()))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'machine': machine.describe(), 'network_windows_per_s': rates,
                       'images': len(samples), 'results': results}, f, indent=1)

if __name__ == '__main__':
    sys.exit(settings.run_main(main))
