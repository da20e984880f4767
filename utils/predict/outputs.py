"""What prediction writes for an image: the files' names, and the image
predicted band by band into them.

    <name>_height.tif   float32 heights, nodata HEIGHT_NODATA where the input has none
    <name>_sem.tif      one band of classes with the dataset's colour table
    <name>_norm.tif     surface normals (asked for with --outputs)
    <name>_uncertainty.tif  float32 sigma of the height (m; asked for with
                        --outputs), the windows' spread through the weights'
                        calibration (utils/predict/calibration.py), nodata
                        as the height's
    <name>_preview.png  image, height, classes and uncertainty, downsampled

Each head is written as its row in utils/model/heads.py says; test_dsm.py
and buildings.py name their files by the same rule (output_path).
"""
import math
import os

import numpy as np

from utils.data.samples import image_channels
from utils.geo.classes import ClassMap
from utils.geo.image import Image
from utils.geo.write import HEIGHT_NODATA, CogWriter
from utils.model import heads
from utils.predict import inputs
from utils.predict.blend import predict_rows

PREVIEW_SIDE = 1000     # px, the longer side of the preview
UNCERTAINTY = 'uncertainty'     # the output that is no head: the height's sigma


def written(kind=None):
    """Names of the outputs prediction writes: the heads' (heads.Head.output)
    and the uncertainty, an optional one; or those of one kind
    (heads.DEFAULT, heads.OPTIONAL)."""
    return [h.name for h in heads.HEADS if h.output and kind in (None, h.output)] + (
        [UNCERTAINTY] if kind in (None, heads.OPTIONAL) else [])


def output_name(path):
    """The stem of an input's outputs: its file name without the extension
    (an address: without its query)."""
    return os.path.splitext(os.path.basename(path.split('?')[0].rstrip('/')))[0]


def output_path(out_dir, name, head):
    """The file of one head's map of image `name`: <out_dir>/<name>_<head>.tif."""
    return os.path.join(out_dir, f'{name}_{head}.tif')


def beside(height_map, head):
    """The file of `head` beside a <name>_height.tif, or None when the
    height map is not named so."""
    folder, file = os.path.split(height_map)
    suffix = f'_{heads.HEIGHT.name}.tif'
    if not file.endswith(suffix):
        return None
    return output_path(folder, file[:-len(suffix)], head)


def output_paths(out_dir, name, outputs):
    """{output: final path} of one image, the preview included."""
    paths = {key: output_path(out_dir, name, key) for key in outputs}
    paths['preview'] = os.path.join(out_dir, f'{name}_preview.png')
    return paths


def preview_head():
    """The class head whose classes the preview shows (None: no class head)."""
    return next((h for h in heads.HEADS if h.is_classes), None)


def _writers(paths, image, coding, record):
    """{head: CogWriter} of the heads in `paths`, on the image's grid."""
    writers = {}
    try:
        for key in paths:
            head = heads.by_name(key)
            if key == UNCERTAINTY:
                writers[key] = CogWriter(paths[key], image.grid.shape, np.float32,
                                         grid=image.grid, nodata=HEIGHT_NODATA, metadata=record)
            elif head is None:      # the preview
                continue
            elif head.is_classes:
                writers[head.name] = coding.writer(paths[head.name], image.grid,
                                                   metadata=record)
            else:
                bands_of = () if head.channels == 1 else (head.channels,)
                writers[head.name] = CogWriter(
                    paths[head.name], image.grid.shape + bands_of, np.float32,
                    grid=image.grid, nodata=HEIGHT_NODATA, metadata=record)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    return writers


def predict_image(predict_fn, path, paths, bands, *, cfg, progress=None, contract=None,
                  record=None, calibration=None):
    """Predict one image band by band and write `paths` (output -> file; see
    output_paths) under temporary names, renamed once all are complete; on
    any error the temporary files are removed. Windows: cfg.cropSize,
    predict_stride, predict_window (predict_fn applies any flips). A class
    head is written as one band of the dataset's label values with its
    colour table, any other as float32, a band per channel, nodata where the
    input has none. `contract`: the weights' input Contract, whose band
    statistics the image is compared with; `record`: {name: value} written
    into every GeoTIFF (GDAL_METADATA); `calibration`: the map from the
    windows' spread to the uncertainty (calibration.Calibration), needed
    when `paths` has UNCERTAINTY. Returns the image's pixel count."""
    tmp = {key: p + '.tmp' for key, p in paths.items()}
    coding = ClassMap(cfg.label_codes)
    writers = {}
    try:
        with Image(path, bands, image_channels(cfg), cfg.image_scale) as image:
            inputs.check_statistics(image, contract)
            h, w = image.height, image.width
            writers = _writers(tmp, image, coding, record)
            shown = preview_head()
            keys = list(writers)
            if shown is not None and shown.name not in keys:
                keys.append(shown.name)
            step = max(1, math.ceil(max(h, w) / PREVIEW_SIDE))
            preview = {'height': [], 'classes': [], UNCERTAINTY: []}
            valid = []      # the masks of the rows read and not yet written

            def read_rows(r0, r1):
                pixels, mask = image.rows(r0, r1)
                valid.append(mask)
                return pixels

            for r0, maps in predict_rows(predict_fn, read_rows, (h, w), cfg.cropSize,
                                         cfg.predict_stride, keys=keys, progress=progress,
                                         window=cfg.predict_window,
                                         spread=UNCERTAINTY in writers):
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
                            writers[key].write(coding.encode(classes, mask))
                    else:
                        values = maps[key]
                        if head.channels == 1:      # one band: [rows, W], as its writer
                            values = values.reshape(values.shape[:2])
                        values[~mask] = HEIGHT_NODATA
                        writers[key].write(values)
                        if on_grid and head.name == heads.HEIGHT.name:
                            preview['height'].append(np.where(mask[grid], values[grid],
                                                              np.nan))
                if UNCERTAINTY in writers:
                    sigma = calibration(maps['spread'])
                    sigma[~mask] = HEIGHT_NODATA
                    writers[UNCERTAINTY].write(sigma)
                    if on_grid:
                        preview[UNCERTAINTY].append(np.where(mask[grid], sigma[grid], np.nan))
            for writer in writers.values():
                writer.close()
            from utils import plots     # matplotlib: not for the scripts that only name outputs
            classes, sigma = (np.concatenate(preview[k]) if preview[k] else None
                              for k in ('classes', UNCERTAINTY))
            plots.plot_prediction(tmp['preview'], image.preview(step),
                                  np.concatenate(preview['height']), classes,
                                  coding.colours, uncertainty=sigma,
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
