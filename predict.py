"""Height maps for your own images, of any size, georeferenced.

    python predict.py INPUT [INPUT ...] [--out DIR] [--correction]
        [--mtl-weights F] [--dae-weights F] [--outputs height,sem,norm]
        [--bands 1,2,3] [--overwrite] [--set NAME=VALUE ...]

INPUT: image files (GeoTIFF/TIFF, PNG, JPEG) or folders of them. Each image
is scaled as the training images were, covered by test_dsm.py's
Gaussian-blended sliding windows (cropSize, test_stride) in batches of
test_batch_size split over the replicas, and read and written in bands of
rows, so memory depends on the image's width, not its size. Per image, in
--out (default <output_root>/predict/):

    <name>_height.tif   float32 heights in the training data's units (metres),
                        the input's georeferencing, nodata -9999 where the input
                        has nodata or alpha 0
    <name>_sem.tif      classes in the dataset's label format
    <name>_norm.tif     surface normals (with --outputs ...,norm)
    <name>_preview.png  image, height and classes, downsampled

Outputs are written under a temporary name and renamed when complete; a
rerun skips images whose outputs all exist (--overwrite redoes them).

Example: python predict.py area1.tif survey_tiles/ --correction --set dataset_name=Vaihingen
"""
import math
import os
import sys
import time

import numpy as np

import config
from utils import settings
from utils.errors import SettingError

OUTPUTS = ('height', 'sem', 'norm')
PREVIEW_SIDE = 1000     # px, the longer side of the preview
# An input band is unlike the training images' when its mean is this many
# training spreads away, or its spread this many times larger or smaller.
FAR_SPREADS = 2.0
SPREAD_RATIO = 3.0


def parse(argv=None):
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('inputs', nargs='+', metavar='INPUT', help='image files or folders')
    p.add_argument('--out', help='output folder (default: <output_root>/predict)')
    p.add_argument('--correction', action='store_true',
                   help='refine the MTL height with the DAE (also: --set correction=True)')
    p.add_argument('--mtl-weights', help='MTL weights file (default: predCheckPointPath)')
    p.add_argument('--dae-weights', help='DAE weights file (default: corrCheckPointPath)')
    p.add_argument('--outputs', default='height,sem',
                   help='comma-separated, of height, sem, norm (default: height,sem)')
    p.add_argument('--bands', default=None,
                   help='1-based input bands in the order the network takes them '
                        '(default: 1,2,3)')
    p.add_argument('--overwrite', action='store_true', help='redo finished images')
    args = settings.parse_args(p, argv)
    args.correction = args.correction or config.correction
    args.outputs = [o.strip() for o in args.outputs.split(',') if o.strip()]
    unknown = [o for o in args.outputs if o not in OUTPUTS]
    if unknown or 'height' not in args.outputs:
        raise SettingError(f"--outputs {','.join(args.outputs)}: list height and any of "
                           f"sem, norm, e.g. --outputs height,sem,norm")
    args.explicit = {pair.split('=', 1)[0].strip() for pair in args.set}
    return args


def output_paths(out_dir, name, outputs):
    """{output: final path} of one image, the preview included."""
    paths = {key: os.path.join(out_dir, f'{name}_{key}.tif') for key in outputs}
    paths['preview'] = os.path.join(out_dir, f'{name}_preview.png')
    return paths


def check_statistics(image, trained):
    """Warn when the image's band statistics are far from the training
    images' (`trained`: the weights' imagery record): a band order or scale
    unlike training's gives heights without meaning."""
    if 'band_mean' not in trained or (stats := image.statistics()) is None:
        return
    mean, spread = stats
    far = [i for i, (m, s, tm, ts) in enumerate(zip(mean, spread, trained['band_mean'],
                                                    trained['band_spread']))
           if abs(m - tm) > FAR_SPREADS * ts or not 1 / SPREAD_RATIO < s / max(ts, 1e-9)
           < SPREAD_RATIO]
    if far:
        shown = ', '.join(f"band {image.bands[i] + 1}: mean {mean[i]:.3f} spread "
                          f"{spread[i]:.3f} (training {trained['band_mean'][i]:.3f} / "
                          f"{trained['band_spread'][i]:.3f})" for i in far)
        from utils import raster
        raster.warn(f"{image.path}: scaled values unlike the training images' ({shown}); "
                    f"check --bands (now {','.join(str(b + 1) for b in image.bands)}) and "
                    f"image_scale (now {image.scale!r}, span {image.span[1]:g})")


def predict_image(predict_fn, path, paths, bands, progress=None, trained=None):
    """Predict one image band by band and write `paths` (output -> file; see
    output_paths) under temporary names, renamed once all are complete.
    `trained`: the weights' imagery record, to compare the image with.
    Returns the image's pixel count."""
    from utils import datasets, evaluation, inference, plots, raster
    tmp = {key: p + '.tmp' for key, p in paths.items()}
    codes = config.label_codes
    with raster.Image(path, bands, datasets.image_channels(), config.image_scale) as image:
        check_statistics(image, trained or {})
        h, w = image.height, image.width
        geo = raster.geo_tags(path, raster.GEOREFERENCING)
        sem_nodata = raster.label_nodata(codes)
        sem_rgb = np.asarray(codes).ndim == 2
        height_tags = geo + [(raster.NODATA_TAG, 's', 0, f'{raster.HEIGHT_NODATA:g}', True)]
        writers = {'height': raster.TiledWriter(tmp['height'], (h, w), np.float32,
                                                height_tags)}
        if 'sem' in paths:
            sem_dtype = np.uint8 if np.max(codes) < 256 else np.uint16
            writers['sem'] = raster.TiledWriter(
                tmp['sem'], (h, w, 3) if sem_rgb else (h, w), sem_dtype,
                geo + [(raster.NODATA_TAG, 's', 0, str(sem_nodata), True)],
                photometric='rgb' if sem_rgb else 'minisblack')
        if 'norm' in paths:
            writers['norm'] = raster.TiledWriter(tmp['norm'], (h, w, 3), np.float32,
                                                 height_tags)
        step = max(1, math.ceil(max(h, w) / PREVIEW_SIDE))
        preview = {'height': [], 'classes': []}
        valid = []      # the masks of the rows read and not yet written

        def read_rows(r0, r1):
            pixels, mask = image.rows(r0, r1)
            valid.append(mask)
            return pixels

        for r0, maps in inference.predict_rows(
                predict_fn, read_rows, (h, w), config.cropSize, config.test_stride,
                keys=('height', 'sem') + (('norm',) if 'norm' in writers else ()),
                progress=progress):
            n = len(maps['height'])
            held = np.concatenate(valid)
            mask, valid[:] = held[:n], [held[n:]]
            height = maps['height']
            height[~mask] = raster.HEIGHT_NODATA
            writers['height'].write(height)
            # the band's rows on the preview grid, copied (a view would keep the band)
            grid = np.s_[(-r0) % step::step, ::step]
            preview['height'].append(np.where(mask[grid], height[grid], np.nan))
            if 'sem' in maps:
                classes = np.argmax(maps['sem'], -1).astype(np.int16)
                classes[~mask] = -1
                preview['classes'].append(classes[grid].copy())
                if 'sem' in writers:
                    labels = evaluation.label_image(np.maximum(classes, 0), codes)
                    labels[~mask] = sem_nodata
                    writers['sem'].write(labels)
            if 'norm' in writers:
                normals = maps['norm']
                normals[~mask] = raster.HEIGHT_NODATA
                writers['norm'].write(normals)
        for writer in writers.values():
            writer.close()
        classes = np.concatenate(preview['classes']) if preview['classes'] else None
        plots.plot_prediction(tmp['preview'], image.preview(step),
                              np.concatenate(preview['height']), classes, codes,
                              title=f"{os.path.basename(path)}: {h} x {w} px")
    for key, final in paths.items():
        os.replace(tmp[key], final)
    return h * w


def main(argv=None):
    args = parse(argv)
    # Imported after --set so the strategy and networks see the overrides.
    from utils import checkpoints, datasets, distribute, inference, progress, raster, stages
    from utils.errors import DatasetError, UserError

    files = raster.find_images(args.inputs)
    names = {}
    for path in files:
        name = os.path.splitext(os.path.basename(path))[0]
        if name in names:
            raise SettingError(f"{names[name]} and {path} would both write {name}_*.tif: "
                               f"predict them in separate runs with different --out")
        names[name] = path
    if distribute.strategy_kind() == 'multi_worker':
        # Every machine predicts its share of the files on its own devices.
        index, count = distribute.worker_share()
        files = files[index::count]
        settings.override('distribution', 'mirrored' if config.multi_gpu_enabled
                          else 'default')
    mtl_path = args.mtl_weights or config.predCheckPointPath
    dae_path = (args.dae_weights or config.corrCheckPointPath) if args.correction else None
    trained = checkpoints.adopt_settings(mtl_path, 'mtl', args.explicit)
    if dae_path:
        checkpoints.adopt_settings(dae_path, 'dae', args.explicit)
    for key, flag in (('sem', 'sem_flag'), ('norm', 'norm_flag')):
        if key in args.outputs and not getattr(config, flag):
            raise SettingError(f"--outputs {','.join(args.outputs)}: these weights have "
                               f"no {key} head ({flag}=False); leave {key} out")
    # the band order the weights were trained on, unless --bands says otherwise
    bands = raster.parse_bands(args.bands or ','.join(map(str, trained.get(
        'bands', range(1, datasets.image_channels() + 1)))))
    # Every input is opened before the networks are built; those that cannot
    # be predicted are listed together and skipped, the others predicted.
    problems = []
    for path in files:
        try:
            raster.Image(path, bands, datasets.image_channels(), config.image_scale).close()
        except UserError as err:
            problems.append((path, ' '.join(str(err).splitlines())))
    if problems:
        print(f"{len(problems)} of {len(files)} input(s) cannot be predicted and are "
              f"skipped:", file=sys.stderr)
        for path, reason in problems:
            print(f"  {reason}", file=sys.stderr)
        files = [f for f in files if f not in dict(problems)]
    failed = DatasetError(f"{len(problems)} input(s) skipped: " +
                          '; '.join(reason for _, reason in problems)) if problems else None
    if not files:
        raise failed

    out_dir = args.out or os.path.join(config.output_root, 'predict')
    os.makedirs(out_dir, exist_ok=True)
    mtl = stages.trained_mtl(mtl_path)
    dae = stages.trained_dae(dae_path) if dae_path else None
    predict_fn = inference.make_predict_fn(mtl, dae, norm='norm' in args.outputs)
    print(f"{len(files)} image(s), {config.strategy.num_replicas_in_sync} replica(s), "
          f"crop {config.cropSize}, stride {config.test_stride}, "
          f"{predict_fn.batch_size} windows per call -> {out_dir}")

    start, megapixels, done, skipped = time.perf_counter(), 0.0, 0, 0
    for path in files:
        name = os.path.splitext(os.path.basename(path))[0]
        paths = output_paths(out_dir, name, args.outputs)
        if not args.overwrite and all(os.path.exists(p) for p in paths.values()):
            print(f"skipped {path}: its outputs exist in {out_dir} (--overwrite redoes it)")
            skipped += 1
            continue
        print(f"{path}")
        bar, t0 = None, time.perf_counter()

        def report(windows, total):
            nonlocal bar
            bar = bar or progress.Progress(total, unit='window',
                                           stateful=('windows/s', 'ETA s'))
            rate = windows / max(time.perf_counter() - t0, 1e-9)
            bar.update(windows, {'windows/s': rate, 'ETA s': (total - windows) / rate})

        megapixels += predict_image(predict_fn, path, paths, bands, progress=report,
                                    trained=trained) / 1e6
        done += 1
    elapsed = time.perf_counter() - start
    print(f"done: {done} image(s) predicted ({megapixels:.1f} megapixels, {elapsed:.1f} s, "
          f"{megapixels / max(elapsed, 1e-9):.2f} megapixels/s), {skipped} skipped; "
          f"outputs ({', '.join(args.outputs)}, preview) in {out_dir}")
    if failed:
        raise failed


if __name__ == '__main__':
    sys.exit(settings.run_main(main))
