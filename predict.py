"""Height maps for your own images, of any size, georeferenced.

    python predict.py INPUT [INPUT ...] [--out DIR] [--correction] [--mtl-weights F]
        [--dae-weights F] [--model ITEM] [--outputs height,sem,norm]
        [--bands 1,2,3] [--engine auto|tensorflow|onnxruntime|openvino] [--overwrite]
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
    <name>_uncertainty.tif  float32 sigma of each height (m), nodata as the
                        height's (--outputs ...,uncertainty; README, Uncertainty)
    <name>_preview.png  image, height, classes (and uncertainty), downsampled

Outputs are written under a temporary name and renamed when complete, and
record the weights' checksums and the settings that shaped them; a rerun
skips images whose outputs exist and match (--overwrite redoes them).
Several processes (TF_CONFIG workers) sharing --out claim images one at a
time through <name>.lock files.

Example: python predict.py area1.tif survey_tiles/ --correction --set dataset_name=Vaihingen
"""
import os
import sys
import time

from utils import settings
from utils.errors import DatasetError, SettingError
from utils.model import heads, weights
from utils.predict.outputs import written


def parse(argv=None):
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('inputs', nargs='+', metavar='INPUT', help='image files or folders')
    p.add_argument('--out', help='output folder (default: <output_root>/predict)')
    weights.add_options(p)
    default = ','.join(written(heads.DEFAULT))
    p.add_argument('--outputs', help=f"comma-separated, of {', '.join(written())} "
                   f"(default: those of {default} the weights have)")
    p.add_argument('--bands', default=None,
                   help='1-based input bands in the order the network takes them '
                        '(default: the training images\' order, recorded with the weights)')
    p.add_argument('--engine', default='auto', choices=('auto', 'tensorflow', 'onnxruntime',
                                                        'openvino'),
                   help='onnxruntime, openvino: one CPU device, the networks converted once '
                        '(cached beside the weights); auto: the faster on CPU, TensorFlow on GPUs')
    p.add_argument('--overwrite', action='store_true', help='redo finished images')
    p.add_argument('--ungeoreferenced', action='store_true',
                   help='predict inputs without georeferencing too, on their pixel grid')
    args = settings.parse_args(p, argv)
    args.outputs_given = args.outputs is not None
    args.outputs = [o.strip() for o in (default if args.outputs is None else args.outputs)
                    .split(',') if o.strip()]
    unknown = [o for o in args.outputs if o not in written()]
    if unknown or heads.HEIGHT.name not in args.outputs:
        others = [o for o in written() if o != heads.HEIGHT.name]
        raise SettingError(f"--outputs {','.join(args.outputs)}: list {heads.HEIGHT.name} "
                           f"and any of {', '.join(others)}, e.g. --outputs "
                           f"{','.join(written())}")
    args.explicit = {pair.split('=', 1)[0].strip() for pair in args.set}
    return args


def main(argv=None):
    args = parse(argv)
    # Imported after --set so the strategy and networks see the overrides.
    from utils import distribute, progress
    from utils.data.samples import image_channels
    from utils.geo.files import find_images
    from utils.geo.image import parse_bands
    from utils.predict import inputs, outputs, provenance
    from utils.predict.calibration import for_prediction
    from utils.predict.claims import Claim
    from utils.predict.flips import with_flips

    cfg = settings.current()    # config.py after --set; the weights' .json below
    files = find_images(args.inputs)
    names = {}
    for path in files:
        name = outputs.output_name(path)
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
    mtl_file, dae_file = weights.from_options(args, cfg)
    # The settings the weights were trained with, unless set on the command line.
    cfg = weights.adopt(cfg, [mtl_file, dae_file], args.explicit)
    contract = mtl_file.contract(cfg)
    for head in heads.HEADS:
        if head.name in args.outputs and head.flag and not getattr(cfg, head.flag):
            if not args.outputs_given:      # a default the weights cannot give
                args.outputs.remove(head.name)
                continue
            raise SettingError(f"--outputs {','.join(args.outputs)}: these weights have "
                               f"no {head.name} head ({head.flag}=False); leave "
                               f"{head.name} out")
    # the uncertainty's calibration: in the .json of the weights making the height
    calibration = (for_prediction(dae_file or mtl_file, cfg, dae_file is not None)
                   if outputs.UNCERTAINTY in args.outputs else None)
    # the band order the weights were trained on, unless --bands says otherwise
    bands = parse_bands(args.bands or ','.join(map(str, contract.bands)))
    files, problems = inputs.readable(files, bands, image_channels(cfg), cfg.image_scale,
                                      args.ungeoreferenced)
    if not files:
        raise inputs.failed(problems)

    out_dir = args.out or os.path.join(cfg.output_root, 'predict')
    os.makedirs(out_dir, exist_ok=True)
    strategy = distribute.get_strategy(cfg)     # TensorFlow starts here, after the checks
    from utils.model import networks
    from utils.predict import engines
    engine = engines.choose_engine(args.engine, strategy, cfg.predict_precision)
    mtl = networks.trained(mtl_file, cfg, strategy)
    dae = networks.trained(dae_file, cfg, strategy) if dae_file else None
    shown = outputs.preview_head()
    predict_fn = with_flips(
        engines.window_fn(engine, mtl, dae, cfg=cfg, strategy=strategy,
                          outputs=args.outputs + ([shown.name] if shown else []),
                          files=(mtl_file, dae_file)),
        cfg.predict_flips, cfg)
    common = provenance.provenance(mtl_file, dae_file, bands, cfg, calibration)
    print(f"{len(files)} image(s), {engine} ({cfg.predict_precision}), "
          f"{strategy.num_replicas_in_sync} replica(s), crop {cfg.cropSize}, stride "
          f"{cfg.predict_stride}, window {cfg.predict_window}, flips {cfg.predict_flips}, "
          f"{predict_fn.batch_size} windows per call -> {out_dir}")

    start, megapixels, done, skipped, elsewhere = time.perf_counter(), 0.0, 0, 0, 0
    for path in files:
        name = outputs.output_name(path)
        paths = outputs.output_paths(out_dir, name, args.outputs)
        record = dict(common, DSMNET_INPUT=provenance.input_record(path))
        why = None if args.overwrite else provenance.stale_outputs(paths, record)
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
            if not args.overwrite and provenance.stale_outputs(paths, record) is None:
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

            megapixels += outputs.predict_image(predict_fn, path, paths, bands, cfg=cfg,
                                                progress=report, contract=contract,
                                                record=record, calibration=calibration) / 1e6
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
        raise inputs.failed(problems)


if __name__ == '__main__':
    sys.exit(settings.run_main(main, tensorflow=False))   # started by get_strategy
