"""Height maps for your own images, of any size, georeferenced.

    python predict.py INPUT [INPUT ...] [--out DIR] [--correction]
        [--mtl-weights F] [--dae-weights F] [--outputs height,sem,norm]
        [--bands 1,2,3] [--engine auto|tensorflow|onnxruntime] [--overwrite]
        [--ungeoreferenced] [--set NAME=VALUE ...]

INPUT: any raster GDAL opens (GeoTIFF/COG, JPEG 2000, VRT mosaic, ERDAS .img,
PNG/JPEG with a world file, ...), an http(s):// or s3:// address of one
(read a block at a time, never downloaded whole), or folders of them. Each image
is scaled as the training images were, covered by blended sliding windows
(cropSize, predict_stride, predict_window, predict_flips) in batches of
test_batch_size split over the replicas, and read and written in bands of
rows, so memory depends on the image's width, not its size. Per image, in
--out (default <output_root>/predict/), Cloud Optimized GeoTIFFs:

    <name>_height.tif   float32 heights in the training data's units (metres),
                        the input's georeferencing, nodata -9999 where the input
                        has nodata or alpha 0
    <name>_sem.tif      one band of classes with the dataset's colour table (weights
                        with a semantics head, sem_flag)
    <name>_norm.tif     surface normals (with --outputs ...,norm)
    <name>_preview.png  image, height and classes, downsampled

Outputs are written under a temporary name and renamed when complete, and
record the weights' checksums and the settings that shaped them; a rerun
skips images whose outputs exist and match (--overwrite redoes them).
Several processes (TF_CONFIG workers) sharing --out claim images one at a
time through <name>.lock files.

Example: python predict.py area1.tif survey_tiles/ --correction --set dataset_name=Vaihingen
"""
import contextlib
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time

import numpy as np

import config
from utils import heads, settings
from utils.errors import SettingError

PREVIEW_SIDE = 1000     # px, the longer side of the preview
# An input band is unlike the training images' when its mean is this many
# training spreads away, or its spread this many times larger or smaller.
FAR_SPREADS = 2.0
SPREAD_RATIO = 3.0


def outputs(kind=None):
    """Names of the heads predict.py writes (utils/heads.py: Head.output), or
    of those of one kind (heads.DEFAULT, heads.OPTIONAL)."""
    return [h.name for h in heads.HEADS if h.output and kind in (None, h.output)]


def parse(argv=None):
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('inputs', nargs='+', metavar='INPUT', help='image files or folders')
    p.add_argument('--out', help='output folder (default: <output_root>/predict)')
    p.add_argument('--correction', action='store_true',
                   help='refine the MTL height with the DAE (also: --set correction=True)')
    p.add_argument('--mtl-weights', help='MTL weights file (default: predCheckPointPath)')
    p.add_argument('--dae-weights', help='DAE weights file (default: corrCheckPointPath)')
    default = ','.join(outputs(heads.DEFAULT))
    p.add_argument('--outputs', help=f"comma-separated, of {', '.join(outputs())} "
                   f"(default: those of {default} the weights have)")
    p.add_argument('--bands', default=None,
                   help='1-based input bands in the order the network takes them '
                        '(default: 1,2,3)')
    p.add_argument('--engine', default='auto', choices=('auto', 'tensorflow', 'onnxruntime'),
                   help='what runs the networks: tensorflow, or onnxruntime (CPU, one '
                        'device; the networks are converted first, as export.py does); '
                        'auto: the faster on CPU (bench/RESULTS.md), TensorFlow on GPUs')
    p.add_argument('--overwrite', action='store_true', help='redo finished images')
    p.add_argument('--ungeoreferenced', action='store_true',
                   help='predict inputs without georeferencing too, on their pixel grid')
    args = settings.parse_args(p, argv)
    args.correction = args.correction or config.correction
    args.outputs_given = args.outputs is not None
    args.outputs = [o.strip() for o in (default if args.outputs is None else args.outputs)
                    .split(',') if o.strip()]
    unknown = [o for o in args.outputs if o not in outputs()]
    if unknown or heads.HEIGHT.name not in args.outputs:
        others = [o for o in outputs() if o != heads.HEIGHT.name]
        raise SettingError(f"--outputs {','.join(args.outputs)}: list {heads.HEIGHT.name} "
                           f"and any of {', '.join(others)}, e.g. --outputs "
                           f"{','.join(outputs())}")
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


def preview_head():
    """The class head whose classes the preview shows (None: no class head)."""
    return next((h for h in heads.HEADS if h.is_classes), None)


def predict_image(predict_fn, path, paths, bands, progress=None, trained=None, record=None,
                  cfg=None):
    """Predict one image band by band and write `paths` (output -> file; see
    output_paths) under temporary names, renamed once all are complete; on
    any error the temporary files are removed. Windows: cfg.cropSize,
    predict_stride, predict_window (predict_fn applies any flips); cfg: the
    run's settings (default: cfg.py's now). Each head
    is written as its row says: a class head as one band of the dataset's
    label values with its colour table, any other as float32, a band per
    channel, nodata where the input has none.
    `trained`: the weights' imagery record, to compare the image with;
    `record`: {name: value} written into every GeoTIFF (GDAL_METADATA).
    Returns the image's pixel count."""
    from utils import datasets, inference, plots, raster
    cfg = settings.current() if cfg is None else cfg
    tmp = {key: p + '.tmp' for key, p in paths.items()}
    classes_of = raster.class_map(cfg.label_codes)
    writers = {}
    try:
        with raster.Image(path, bands, datasets.image_channels(cfg), cfg.image_scale) as image:
            check_statistics(image, trained or {})
            h, w = image.height, image.width
            common = dict(crs=image.crs, transform=image.transform, metadata=record)
            written = [heads.by_name(key) for key in paths if key != 'preview']
            for head in written:
                if head.is_classes:
                    writers[head.name] = raster.CogWriter(
                        tmp[head.name], (h, w), classes_of['dtype'],
                        nodata=classes_of['nodata'], resampling='nearest',
                        colormap=classes_of['colormap'], **common)
                else:
                    bands_of = () if head.channels == 1 else (head.channels,)
                    writers[head.name] = raster.CogWriter(
                        tmp[head.name], (h, w) + bands_of, np.float32,
                        nodata=raster.HEIGHT_NODATA, **common)
            shown = preview_head()
            keys = [head.name for head in written]
            if shown is not None and shown.name not in keys:
                keys.append(shown.name)
            step = max(1, math.ceil(max(h, w) / PREVIEW_SIDE))
            preview = {'height': [], 'classes': []}
            valid = []      # the masks of the rows read and not yet written

            def read_rows(r0, r1):
                pixels, mask = image.rows(r0, r1)
                valid.append(mask)
                return pixels

            for r0, maps in inference.predict_rows(
                    predict_fn, read_rows, (h, w), cfg.cropSize, cfg.predict_stride,
                    keys=keys, progress=progress, window=cfg.predict_window):
                n = len(maps[heads.HEIGHT.name])
                held = np.concatenate(valid)
                mask, valid[:] = held[:n], [held[n:]]
                # the band's rows on the preview grid, copied (a view would keep the
                # band); bands without one add nothing, so at most PREVIEW_SIDE pieces
                grid = np.s_[(-r0) % step::step, ::step]
                on_grid = len(range((-r0) % step, n, step)) > 0
                for key in keys:
                    if key not in maps:
                        continue
                    head = heads.by_name(key)
                    if head.is_classes:
                        classes = head.answer(maps[key]).astype(np.int16)
                        classes[~mask] = -1
                        if on_grid and head.name == shown.name:
                            preview['classes'].append(classes[grid].copy())
                        if key in writers:
                            values = classes_of['values'][np.maximum(classes, 0)]
                            values[~mask] = classes_of['nodata']
                            writers[key].write(values)
                    else:
                        values = maps[key]
                        if head.channels == 1:      # one band: [rows, W], as its writer
                            values = values.reshape(values.shape[:2])
                        values[~mask] = raster.HEIGHT_NODATA
                        writers[key].write(values)
                        if on_grid and head.name == heads.HEIGHT.name:
                            preview['height'].append(np.where(mask[grid], values[grid],
                                                              np.nan))
            for writer in writers.values():
                writer.close()
            classes = np.concatenate(preview['classes']) if preview['classes'] else None
            plots.plot_prediction(tmp['preview'], image.preview(step),
                                  np.concatenate(preview['height']), classes,
                                  classes_of['colours'],
                                  title=f"{os.path.basename(path)}: {h} x {w} px")
        for key, final in paths.items():
            os.replace(tmp[key], final)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        for name in tmp.values():
            if os.path.exists(name):
                os.remove(name)
        raise
    return h * w


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(2 ** 22):
            digest.update(chunk)
    return digest.hexdigest()


def project_version():
    """`git describe` of this checkout, or 'unknown' outside one."""
    try:
        proc = subprocess.run(['git', 'describe', '--always', '--dirty', '--tags'],
                              cwd=os.path.dirname(os.path.abspath(__file__)),
                              capture_output=True, text=True, timeout=10)
        return proc.stdout.strip() or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def provenance(mtl_path, dae_path, bands, cfg):
    """What shaped the predictions, recorded in every output (GDAL_METADATA):
    the weights files' SHA-256, the prediction settings and the project
    version. Everything but the version must match for a rerun to keep an
    image's outputs."""
    shaping = dict(crop=cfg.cropSize, stride=cfg.predict_stride,
                   window=cfg.predict_window, flips=cfg.predict_flips,
                   bands=[b + 1 for b in bands], image_scale=cfg.image_scale,
                   correction=dae_path is not None)
    return {'DSMNET_MTL_SHA256': file_sha256(mtl_path),
            'DSMNET_DAE_SHA256': file_sha256(dae_path) if dae_path else 'none',
            'DSMNET_PREDICTION': json.dumps(shaping, sort_keys=True),
            'DSMNET_VERSION': project_version()}


def input_record(path):
    """The input file as the outputs record it: a changed file is redone (an
    address: recorded as it is)."""
    from utils import raster
    if raster.is_remote(path):
        return json.dumps({'address': path})
    stat = os.stat(path)
    return json.dumps({'file': os.path.basename(path), 'bytes': stat.st_size,
                       'modified_ns': stat.st_mtime_ns}, sort_keys=True)


def stale_outputs(paths, record):
    """None when every output exists and records `record` (the version
    aside), else why the image must be predicted again (an unreadable
    output records nothing: redone)."""
    from utils import raster
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        return f"{os.path.basename(missing[0])} is missing"
    for key, path in paths.items():
        if key == 'preview':
            continue
        found = raster.metadata(path)
        differ = [k for k in record if k != 'DSMNET_VERSION' and found.get(k) != record[k]]
        if differ:
            return (f"{os.path.basename(path)} was made with other "
                    f"{', '.join(k.replace('DSMNET_', '').lower() for k in differ)}")
    return None


class Claim:
    """An image claimed by this process: `<out>/<name>.lock`, created
    atomically (O_EXCL), so that of several workers sharing the output
    folder exactly one predicts each image. A lock whose process is gone
    (same host, pid not running) is taken over."""

    def __init__(self, out_dir, name):
        self.path = os.path.join(out_dir, f'{name}.lock')
        self.owner = f"{socket.gethostname()} {os.getpid()}"
        self.held = False

    def take(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._abandoned():
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, 'w') as f:
                f.write(self.owner + '\n')
            self.held = True
            return True
        return False

    def holder(self):
        try:
            with open(self.path) as f:
                return f.read().strip()
        except OSError:
            return ''

    def _abandoned(self):
        host, _, pid = self.holder().partition(' ')
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self):
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            self.held = False


def main(argv=None):
    args = parse(argv)
    # Imported after --set so the strategy and networks see the overrides.
    from utils import (checkpoints, datasets, distribute, export, inference, progress, raster,
                       tasks)
    from utils.errors import DatasetError, UserError

    cfg = settings.current()    # cfg.py after --set; the weights' .json below
    files = raster.find_images(args.inputs)
    names = {}
    for path in files:
        name = output_name(path)
        if name in names:
            raise SettingError(f"{names[name]} and {path} would both write {name}_*.tif: "
                               f"predict them in separate runs with different --out")
        names[name] = path
    if distribute.strategy_kind(cfg) == 'multi_worker':
        # Every machine claims images one at a time and predicts them on its
        # own devices; tasks other than the chief and the workers take none.
        task = distribute.task_type()
        if task not in distribute.WORKING_TASKS:
            print(f"TF_CONFIG task {task!r} takes no part in prediction (only "
                  f"{' and '.join(distribute.WORKING_TASKS)} tasks do): nothing to do")
            return
        cfg = cfg.replace(distribution='mirrored' if cfg.multi_gpu_enabled else 'default')
    mtl_path = args.mtl_weights or cfg.predCheckPointPath
    dae_path = (args.dae_weights or cfg.corrCheckPointPath) if args.correction else None
    # The settings the weights were trained with, unless set on the command line.
    cfg, trained = checkpoints.trained_settings(cfg, mtl_path, dae_path, args.explicit)
    for head in heads.HEADS:
        if head.name in args.outputs and head.flag and not getattr(cfg, head.flag):
            if not args.outputs_given:      # a default the weights cannot give
                args.outputs.remove(head.name)
                continue
            raise SettingError(f"--outputs {','.join(args.outputs)}: these weights have "
                               f"no {head.name} head ({head.flag}=False); leave "
                               f"{head.name} out")
    # the band order the weights were trained on, unless --bands says otherwise
    bands = raster.parse_bands(args.bands or ','.join(map(str, trained.get(
        'bands', range(1, datasets.image_channels(cfg) + 1)))))
    # Every input is opened before the networks are built; those that cannot
    # be predicted are listed together and skipped, the others predicted.
    problems = []
    for path in files:
        try:
            with raster.Image(path, bands, datasets.image_channels(cfg),
                              cfg.image_scale) as image:
                image.rows(0, 1)    # a file damaged from its first rows fails now
                if (image.crs is None or image.transform is None) and \
                        not args.ungeoreferenced:
                    raise DatasetError(
                        f"{path}: no {'CRS' if image.transform else 'georeferencing'} "
                        f"found by GDAL (GeoTIFF tags, world file, .prj, .aux.xml). Fix: "
                        f"georeference it (gdal_edit.py -a_srs EPSG:n -a_ullr ...), or "
                        f"add --ungeoreferenced to predict it on its pixel grid.")
        except UserError as err:
            problems.append((path, ' '.join(str(err).splitlines())))
    if problems:
        print(f"{len(problems)} of {len(files)} input(s) cannot be predicted and are "
              f"skipped:", file=sys.stderr)
        for path, reason in problems:
            print(f"  {reason}", file=sys.stderr)
        files = [f for f in files if f not in dict(problems)]
    if not files:
        raise failed_inputs(problems)

    out_dir = args.out or os.path.join(cfg.output_root, 'predict')
    os.makedirs(out_dir, exist_ok=True)
    strategy = distribute.get_strategy(cfg)
    mtl = tasks.trained_mtl(cfg, strategy, mtl_path)
    dae = tasks.trained_dae(cfg, strategy, dae_path) if dae_path else None
    shown = preview_head()
    engine = export.choose_engine(args.engine, strategy)
    predict_fn = inference.with_flips(
        export.make_predict_fn(engine, mtl, dae, cfg=cfg, strategy=strategy,
                               outputs=args.outputs + ([shown.name] if shown else [])),
        cfg.predict_flips, cfg)
    common = provenance(mtl_path, dae_path, bands, cfg)
    print(f"{len(files)} image(s), {engine}, {strategy.num_replicas_in_sync} replica(s), "
          f"crop {cfg.cropSize}, stride {cfg.predict_stride}, window "
          f"{cfg.predict_window}, flips {cfg.predict_flips}, "
          f"{predict_fn.batch_size} windows per call -> {out_dir}")

    start, megapixels, done, skipped, elsewhere = time.perf_counter(), 0.0, 0, 0, 0
    for path in files:
        name = output_name(path)
        paths = output_paths(out_dir, name, args.outputs)
        record = dict(common, DSMNET_INPUT=input_record(path))
        why = None if args.overwrite else stale_outputs(paths, record)
        if not args.overwrite and why is None:
            print(f"skipped {path}: its outputs in {out_dir} match (--overwrite redoes it)")
            skipped += 1
            continue
        claim = Claim(out_dir, name)
        if not claim.take():
            print(f"left {path} to {claim.holder() or 'another process'} ({claim.path})")
            elsewhere += 1
            continue
        try:
            # another worker may have finished it since the first look
            if not args.overwrite and stale_outputs(paths, record) is None:
                print(f"skipped {path}: finished meanwhile by another process")
                skipped += 1
                continue
            print(f"{path}" + (f" (redone: {why})" if why and 'missing' not in why else ''))
            bar, t0 = None, time.perf_counter()

            def report(windows, total):
                nonlocal bar
                bar = bar or progress.Progress(total, unit='window',
                                               stateful=('windows/s', 'ETA s'))
                rate = windows / max(time.perf_counter() - t0, 1e-9)
                bar.update(windows, {'windows/s': rate, 'ETA s': (total - windows) / rate})

            megapixels += predict_image(predict_fn, path, paths, bands, progress=report,
                                        trained=trained, record=record, cfg=cfg) / 1e6
            done += 1
        except DatasetError as err:     # e.g. a remote file cut off mid-way
            reason = ' '.join(str(err).splitlines())
            print(f"skipped {path}: {reason}", file=sys.stderr)
            problems.append((path, reason))
        finally:
            claim.release()
    elapsed = time.perf_counter() - start
    print(f"done: {done} image(s) predicted ({megapixels:.1f} megapixels, {elapsed:.1f} s, "
          f"{megapixels / max(elapsed, 1e-9):.2f} megapixels/s), {skipped} skipped"
          + (f", {elsewhere} left to other processes" if elsewhere else '')
          + f"; outputs ({', '.join(args.outputs)}, preview) in {out_dir}")
    if problems:
        raise failed_inputs(problems)


def failed_inputs(problems):
    """The run's error for the inputs that could not be predicted."""
    from utils.errors import DatasetError
    return DatasetError(f"{len(problems)} input(s) skipped: " +
                        '; '.join(reason for _, reason in problems))


def output_name(path):
    """The stem of an input's outputs: its file name without the extension
    (an address: without its query)."""
    return os.path.splitext(os.path.basename(path.split('?')[0].rstrip('/')))[0]


if __name__ == '__main__':
    sys.exit(settings.run_main(main))
