"""Evaluation of the MTL (and the DAE) on a whole split, image by image.

The one procedure behind test_dsm.py and the training loops' per-epoch
validation, so both measure the same thing (README, Testing): tiled
prediction, height metrics per image averaged over images, segmentation
metrics from one confusion matrix over the split, and a trivial baseline
(every pixel = the training split's mean height) on the same images.
Validation uses fewer windows per image (valid_stride) than the published
test (test_stride): it only ranks the epochs.
"""
import os

import numpy as np
import tifffile

import config
from utils import datasets, distribute, inference, metrics, progress
from utils.raster import GEO_TAGS, geo_tags  # noqa: F401  (copied to the predictions)

SUMMARY_KEYS = metrics.HEIGHT_KEYS + ('miou', 'oa', 'fwiou', 'baseline_rmse', 'baseline_mae')

_train_mean = {}       # (dataset, root, flags) -> mean training height
_predict_cache = {}    # the last (models, settings) -> predict_fn: no retrace per epoch


def train_mean_height():
    """Mean of the valid pixels of every training height map (cached per dataset)."""
    key = (config.dataset_name, os.path.abspath(config.shortcut_path),
           config.train_valid_flag, config.sar_mode)
    if key not in _train_mean:
        total, count = 0.0, 0
        for sample in datasets.find_split('train'):
            height = np.asarray(datasets.load_sample(sample).height, np.float64)
            valid = np.isfinite(height)
            total += float(height[valid].sum())
            count += int(valid.sum())
        if count == 0:
            raise datasets.DatasetError(f"the 'train' split of {config.dataset_name!r} under "
                             f"{config.shortcut_path} has no valid height pixel: "
                             f"cannot compute the mean-height baseline")
        _train_mean[key] = total / count
    return _train_mean[key]


def label_image(pred_idx, label_codes):
    """Class indices -> the dataset's label format (RGB colours, or integer codes)."""
    codes = np.asarray(label_codes)
    if codes.ndim == 2:
        return codes[pred_idx].astype(np.uint8)
    return codes[pred_idx].astype(np.uint8 if codes.max() < 256 else np.uint16)


def _write_outputs(out_dir, sample, pred_height, pred_idx, plot_args):
    tags = geo_tags(sample.image)
    tifffile.imwrite(os.path.join(out_dir, f'{sample.name}_height.tif'),
                     pred_height.astype(np.float32), extratags=tags)
    if pred_idx is not None:
        sem = label_image(pred_idx, config.label_codes)
        tifffile.imwrite(os.path.join(out_dir, f'{sample.name}_sem.tif'), sem,
                         photometric='rgb' if sem.ndim == 3 else 'minisblack',
                         extratags=tags)
    if plot_args is not None:
        from utils import plots     # matplotlib only when figures are wanted
        plots.plot_test_image(os.path.join(out_dir, f'{sample.name}.png'), **plot_args)


def _predict_fn(mtl, dae):
    key = (id(mtl), id(dae), config.test_batch_size, config.jit_compile)
    if _predict_cache.get('key') != key:
        _predict_cache.clear()
        _predict_cache.update(key=key, models=(mtl, dae),
                              fn=inference.make_predict_fn(mtl, dae))
    return _predict_cache['fn']


def _mean(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def evaluate(mtl, dae=None, split='valid', out_dir=None, max_images=None, verbose=1,
             stride=None):
    """Metrics of the networks on `split` (a dict, see module docstring), with
    windows every `stride` px (None: config.test_stride, as published).

    Keys: mse, mae, rmse, delta1..3 (refined height when `dae` is given),
    mtl_* the same for the MTL's own height (with `dae`), baseline_rmse and
    baseline_mae, baseline_height; segmentation miou, oa, fwiou, mean_f1 and
    per-class iou, precision, recall, f1, confusion_matrix (None without
    semantics); 'per_image' (one dict per image); 'images', 'split'.
    Binary datasets (label codes {0, 1}) score heights on class 1 only
    (metrics.mask_binary_heights), the baseline against the same masked truth.
    With out_dir: <name>_height.tif (float32, GeoTIFF tags of the input kept),
    <name>_sem.tif (label codes/colours) and, for the first
    config.test_plot_images images, <name>.png."""
    samples = datasets.find_split(split)
    if max_images:
        samples = samples[:max_images]
    if not samples:
        raise datasets.DatasetError(f"split {split!r} of {config.dataset_name!r} has no image "
                         f"(shortcut_path = {config.shortcut_path!r})")
    baseline = train_mean_height()
    predict_fn = _predict_fn(mtl, dae)
    num_classes = len(config.label_codes)
    binary = metrics.is_binary(config.label_codes)
    confusion = metrics.ConfusionMatrix(num_classes)
    has_sem = False
    writer = out_dir is not None and distribute.is_chief()
    if writer:
        os.makedirs(out_dir, exist_ok=True)
    # rmse shown is the running mean over images, i.e. the overall figure so far
    bar = progress.Progress(len(samples), unit='image') if verbose else None
    per_image = []
    for index, sample in enumerate(samples):
        data = datasets.load_sample(sample)
        out = inference.predict_tile(predict_fn, data.image, config.cropSize,
                                     stride or config.test_stride)
        gt = np.asarray(data.height, np.float32)
        pred_idx = np.argmax(out['sem'], -1) if 'sem' in out else None
        labeled = pred_idx is not None and data.labels is not None
        if labeled:
            has_sem = True
            confusion.update(pred_idx, data.labels)
        heights = {'': out['height']}
        if dae is not None:
            heights['mtl_'] = out['height_mtl']
        scored_gt = gt
        if binary and labeled:
            for prefix, h in heights.items():
                heights[prefix], scored_gt = metrics.mask_binary_heights(
                    h, gt, pred_idx, data.labels, config.label_codes)
        row = {'name': sample.name}
        for prefix, h in heights.items():
            row.update({prefix + k: v for k, v in metrics.height_metrics(h, scored_gt).items()})
        base = metrics.height_metrics(np.full_like(scored_gt, baseline), scored_gt)
        row.update(baseline_rmse=base['rmse'], baseline_mae=base['mae'])
        per_image.append(row)
        if writer:
            plot_args = None
            if index < config.test_plot_images:
                maps = {'MTL height': heights['mtl_' if dae is not None else '']}
                if dae is not None:
                    maps['refined height'] = heights['']
                plot_args = dict(image=data.image, gt=scored_gt, predictions=maps,
                                 title=f"{sample.name}: RMSE {row['rmse']:.3f} m")
            _write_outputs(out_dir, sample, out['height'], pred_idx, plot_args)
        if bar:
            bar.update(index + 1, {'rmse': row['rmse']})

    result = {k: _mean([r[k] for r in per_image]) for k in per_image[0] if k != 'name'}
    seg = confusion.results() if has_sem else {
        k: None for k in ('iou', 'precision', 'recall', 'f1', 'miou', 'mean_f1', 'oa', 'fwiou')}
    result.update(seg)
    result.update(confusion_matrix=confusion.matrix.tolist() if has_sem else None,
                  baseline_height=baseline, images=len(per_image), split=split,
                  per_image=per_image)
    return result


def validate(mtl, dae=None, *, cfg, strategy):
    """The training loops' per-epoch validation: evaluate() on the valid split
    with config.valid_stride, coarser than the published test stride, since
    it only ranks epochs to keep the best weights."""
    return evaluate(mtl, dae, split='valid', verbose=0, stride=config.valid_stride)
