"""Evaluation of the MTL (and the DAE) on a whole split, image by image.

The one procedure behind test_dsm.py and the training loops' per-epoch
validation, so both measure the same thing (README, Testing): tiled
prediction, height metrics per image averaged over images, segmentation
metrics from one confusion matrix over the split, and a trivial baseline
(every pixel = the training split's mean height) on the same images.
Validation uses fewer windows per image (valid_stride) than the published
test (test_stride): it only ranks the epochs. Besides the height, the heads
utils/model/heads.py marks `scored` are scored: class heads by the confusion
matrix, others by their per-image error against their target.

uncertainty() fits the height uncertainty's calibration on the valid split
and measures it on another (README, Uncertainty), with predict.py's windows
(predict_stride, predict_window, predict_flips), whose heights and spread
are the ones predict.py writes.

Settings come from `cfg` (config.py's names); the networks run under the
given tf.distribute `strategy`.
"""
import os

import numpy as np

from utils import distribute, progress
from utils.data.labels import building_classes
from utils.data.layouts import find_split
from utils.data.samples import load_sample
from utils.errors import DatasetError
from utils.evaluate import metrics
from utils.evaluate.buildings import BuildingErrors
from utils.evaluate.uncertainty import UncertaintyMetrics
from utils.geo.classes import ClassMap
from utils.geo.read import read_grid
from utils.geo.write import write_cog
from utils.model import heads
from utils.predict.blend import predict_tile
from utils.predict.calibration import Calibration, windows_of
from utils.predict.engines import tensorflow_fn
from utils.predict.flips import with_flips
from utils.predict.outputs import output_path

SUMMARY_KEYS = metrics.HEIGHT_KEYS + ('miou', 'oa', 'fwiou', 'baseline_rmse', 'baseline_mae')

FIT_PIXELS = 20000     # valid pixels per image the calibration is fitted on (a seeded draw)

_train_mean = {}       # (dataset, root, flags) -> mean training height
_predict_cache = {}    # the last (models, settings) -> predict_fn: no retrace per epoch


def train_mean_height(cfg):
    """Mean of the valid pixels of every training height map (cached per dataset)."""
    key = (cfg.dataset_name, os.path.abspath(cfg.shortcut_path),
           cfg.train_valid_flag, cfg.sar_mode)
    if key not in _train_mean:
        total, count = 0.0, 0
        for sample in find_split(cfg, 'train'):
            height = np.asarray(load_sample(cfg, sample).height, np.float64)
            valid = np.isfinite(height)
            total += float(height[valid].sum())
            count += int(valid.sum())
        if count == 0:
            raise DatasetError(f"the 'train' split of {cfg.dataset_name!r} under "
                               f"{cfg.shortcut_path} has no valid height pixel: "
                               f"cannot compute the mean-height baseline")
        _train_mean[key] = total / count
    return _train_mean[key]


def _write_outputs(out_dir, sample, pred_height, classes, label_codes, plot_args):
    """<name>_height.tif, and <name>_<head>.tif of each class head in `classes`
    (head name -> class indices) coded as predict.py codes its class maps
    (geo/classes.ClassMap), COGs with the input's georeferencing."""
    grid = read_grid(sample.image)
    write_cog(output_path(out_dir, sample.name, heads.HEIGHT.name),
              np.asarray(pred_height, np.float32), grid=grid)
    coding = ClassMap(label_codes)
    for name, pred_idx in classes.items():
        coding.write(output_path(out_dir, sample.name, name), pred_idx, grid)
    if plot_args is not None:
        from utils import plots     # matplotlib only when figures are wanted
        plots.plot_test_image(os.path.join(out_dir, f'{sample.name}.png'), **plot_args)


def _predict_fn(mtl, dae, cfg, strategy, outputs):
    key = (id(mtl), id(dae), id(strategy), cfg.test_batch_size, cfg.jit_compile, outputs)
    if _predict_cache.get('key') != key:
        _predict_cache.clear()
        _predict_cache.update(key=key, models=(mtl, dae, strategy),
                              fn=tensorflow_fn(mtl, dae, cfg=cfg, strategy=strategy,
                                               outputs=outputs))
    return _predict_cache['fn']


def _value_errors(head, pred, loaded, cfg):
    """{<head>_mae, <head>_rmse} of a value head on one image, over its valid
    heights (the pixels its training loss counts)."""
    truth = np.asarray(head.target(loaded, cfg), np.float64)
    error = (np.asarray(pred, np.float64).reshape(truth.shape) - truth)[
        np.isfinite(np.asarray(loaded.height, np.float64))]
    if not error.size:
        return {f'{head.name}_mae': None, f'{head.name}_rmse': None}
    return {f'{head.name}_mae': float(np.mean(np.abs(error))),
            f'{head.name}_rmse': float(np.sqrt(np.mean(error ** 2)))}


def _mean(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def evaluate(mtl, dae=None, *, cfg, strategy, split='valid', out_dir=None, max_images=None,
             verbose=1, stride=None, per_building=True):
    """Metrics of the networks on `split` (a dict, see module docstring), with
    windows every `stride` px (None: cfg.test_stride, as published).

    Keys: mse, mae, rmse, delta1..3 (refined height when `dae` is given),
    mtl_* the same for the MTL's own height (with `dae`), baseline_rmse and
    baseline_mae, baseline_height; segmentation miou, oa, fwiou, mean_f1 and
    per-class iou, precision, recall, f1, confusion_matrix (None without
    semantics); 'buildings' (with `per_building`): errors per building of
    the reference labels and pixel errors by height bin
    (evaluate/buildings.BuildingErrors.results; None for datasets without a
    building class); <head>_mae and <head>_rmse of every other scored head
    the MTL has; 'per_image' (one dict per image); 'images', 'split'.
    Binary datasets (label codes {0, 1}) score heights on class 1 only
    (metrics.mask_binary_heights), the baseline against the same masked truth.
    With out_dir: <name>_height.tif (float32, the input's georeferencing),
    <name>_sem.tif (one band of label values with the dataset's colour table),
    COGs, and, for the first cfg.test_plot_images images, <name>.png."""
    samples = find_split(cfg, split)
    if max_images:
        samples = samples[:max_images]
    if not samples:
        raise DatasetError(f"split {split!r} of {cfg.dataset_name!r} has no image "
                           f"(shortcut_path = {cfg.shortcut_path!r})")
    baseline = train_mean_height(cfg)
    scored = [h for h in heads.HEADS if h.scored]
    predict_fn = _predict_fn(mtl, dae, cfg, strategy, tuple(h.name for h in scored))
    num_classes = len(cfg.label_codes)
    binary = metrics.is_binary(cfg.label_codes)
    confusion = metrics.ConfusionMatrix(num_classes)
    has_sem = False
    writer = out_dir is not None and distribute.is_chief(strategy)
    if writer:
        os.makedirs(out_dir, exist_ok=True)
    # rmse shown is the running mean over images, i.e. the overall figure so far
    bar = progress.Progress(len(samples), unit='image') if verbose else None
    per_image = []
    classes = building_classes(cfg)
    per_building = BuildingErrors(classes) if classes and per_building else None
    for index, sample in enumerate(samples):
        data = load_sample(cfg, sample)
        out = predict_tile(predict_fn, data.image, cfg.cropSize, stride or cfg.test_stride)
        gt = np.asarray(data.height, np.float32)
        classes = {h.name: h.answer(out[h.name]) for h in scored
                   if h.is_classes and h.name in out}
        # a sample has one set of labels: the truth of the (one) class head
        pred_idx = next(iter(classes.values()), None)
        labeled = pred_idx is not None and data.labels is not None
        if labeled:
            has_sem = True
            confusion.update(pred_idx, data.labels)
        if per_building is not None and data.labels is not None:
            per_building.add(out['height'], gt, data.labels)
        heights = {'': out['height']}
        if dae is not None:
            heights['mtl_'] = out['height_mtl']
        scored_gt = gt
        if binary and labeled:
            for prefix, h in heights.items():
                heights[prefix], scored_gt = metrics.mask_binary_heights(
                    h, gt, pred_idx, data.labels, cfg.label_codes)
        row = {'name': sample.name}
        for prefix, h in heights.items():
            row.update({prefix + k: v for k, v in metrics.height_metrics(h, scored_gt).items()})
        for head in scored:
            if not head.is_classes and head.name in out:
                row.update(_value_errors(head, out[head.name], data, cfg))
        base = metrics.height_metrics(np.full_like(scored_gt, baseline), scored_gt)
        row.update(baseline_rmse=base['rmse'], baseline_mae=base['mae'])
        per_image.append(row)
        if writer:
            plot_args = None
            if index < cfg.test_plot_images:
                maps = {'MTL height': heights['mtl_' if dae is not None else '']}
                if dae is not None:
                    maps['refined height'] = heights['']
                plot_args = dict(image=data.image, gt=scored_gt, predictions=maps,
                                 title=f"{sample.name}: RMSE {row['rmse']:.3f} m")
            _write_outputs(out_dir, sample, out['height'], classes, cfg.label_codes, plot_args)
        if bar:
            bar.update(index + 1, {'rmse': row['rmse']})

    result = {k: _mean([r[k] for r in per_image]) for k in per_image[0] if k != 'name'}
    seg = confusion.results() if has_sem else {
        k: None for k in ('iou', 'precision', 'recall', 'f1', 'miou', 'mean_f1', 'oa', 'fwiou')}
    result.update(seg)
    result.update(confusion_matrix=confusion.matrix.tolist() if has_sem else None,
                  baseline_height=baseline, images=len(per_image), split=split,
                  per_image=per_image, buildings=per_building.results()
                  if per_building is not None and per_building.pairs else None)
    return result


def validate(mtl, dae=None, *, cfg, strategy):
    """The training loops' per-epoch validation: evaluate() on the valid split
    with cfg.valid_stride, coarser than the published test stride, since it
    only ranks epochs to keep the best weights."""
    return evaluate(mtl, dae, cfg=cfg, strategy=strategy, split='valid', verbose=0,
                    stride=cfg.valid_stride, per_building=False)


def _spread_errors(mtl, dae, cfg, strategy, split, max_images, verbose):
    """Per image of `split`: (spread, error, reference height) over its pixels
    with a reference height, heights and spread from predict.py's windows.
    (Binary datasets too: every pixel, not class 1 only.)"""
    samples = find_split(cfg, split)[:max_images or None]
    predict_fn = with_flips(_predict_fn(mtl, dae, cfg, strategy, ()), cfg.predict_flips, cfg)
    bar = progress.Progress(len(samples), unit=f'{split} image') if verbose else None
    for index, sample in enumerate(samples):
        data = load_sample(cfg, sample)
        out = predict_tile(predict_fn, data.image, cfg.cropSize, cfg.predict_stride,
                           window=cfg.predict_window, spread=True)
        truth = np.asarray(data.height, np.float64)
        valid = np.isfinite(truth)
        yield out['spread'][valid], out['height'][valid] - truth[valid], truth[valid]
        if bar:
            bar.update(index + 1, {})


def uncalibrated(cfg):
    """Why the uncertainty's calibration cannot be fitted on the valid split
    (None: it can): the split is missing or empty, or training saw it."""
    if not cfg.train_valid_flag:
        return "train_valid_flag = False trained on the valid split: its errors are not held out"
    try:
        find_split(cfg, 'valid')    # the layout's error for a missing or empty split
    except DatasetError as err:
        return ' '.join(str(err).splitlines())
    return None


def uncertainty(mtl, dae=None, *, cfg, strategy, split='test', max_images=None, verbose=1):
    """(Calibration, metrics): the calibration of the windows' spread fitted
    on up to FIT_PIXELS pixels of each valid image, and
    evaluate/uncertainty.UncertaintyMetrics.results() of the calibrated
    sigma on `split` (the first `max_images`)."""
    rng = np.random.default_rng(cfg.seed)
    spreads, errors = [], []
    for spread, error, _ in _spread_errors(mtl, dae, cfg, strategy, 'valid', None, verbose):
        pick = rng.permutation(len(spread))[:FIT_PIXELS]
        spreads.append(spread[pick])
        errors.append(error[pick])
    calibration = Calibration.fit(np.concatenate(spreads), np.abs(np.concatenate(errors)),
                                  windows_of(cfg, dae is not None))
    measured = UncertaintyMetrics()
    for spread, error, truth in _spread_errors(mtl, dae, cfg, strategy, split, max_images,
                                               verbose):
        measured.add(calibration(spread), error, truth)
    return calibration, measured.results()
