"""Test metrics (README, Testing): height errors per image, segmentation
scores from one confusion matrix over a whole split.

Height metrics are computed per image and averaged over images by the caller
(utils/evaluate/evaluation.py). Pixels without valid ground truth (NaN, or False in
`valid`) never count.
"""
import numpy as np

# Heights at or below 0 are raised to this for the delta ratio only, so that
# ground level (0 m) neither divides by zero nor flips the ratio's sign.
DELTA_EPS = 1e-3
DELTA_BASE = 1.25
HEIGHT_KEYS = ('mse', 'mae', 'rmse', 'delta1', 'delta2', 'delta3')


def _valid_mask(pred, gt, valid):
    mask = np.isfinite(gt) & np.isfinite(pred)
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != gt.shape:
            raise ValueError(f"valid mask shape {valid.shape} != ground truth {gt.shape}")
        mask &= valid
    return mask


def height_metrics(pred, gt, valid=None):
    """MSE, MAE, RMSE and delta1..3 of one image over its valid pixels.

    An image with no valid pixel gives NaN for every metric (the caller's
    average then skips it with nanmean)."""
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"predicted height shape {pred.shape} != ground truth {gt.shape}")
    mask = _valid_mask(pred, gt, valid)
    if not mask.any():
        return {k: float('nan') for k in HEIGHT_KEYS}
    p, g = pred[mask], gt[mask]
    err = p - g
    mse = float(np.mean(err ** 2))
    out = {'mse': mse, 'mae': float(np.mean(np.abs(err))), 'rmse': float(np.sqrt(mse))}
    pc, gc = np.maximum(p, DELTA_EPS), np.maximum(g, DELTA_EPS)
    ratio = np.maximum(pc / gc, gc / pc)
    for k in (1, 2, 3):
        out[f'delta{k}'] = float(np.mean(ratio < DELTA_BASE ** k))
    return out


def is_binary(label_codes):
    """True for datasets whose label codes are exactly {0, 1} (DFC2023, *_bin)."""
    return sorted(label_codes) == [0, 1] if all(
        isinstance(c, (int, np.integer)) for c in label_codes) else False


def mask_binary_heights(pred_height, gt_height, pred_idx, gt_idx, label_codes):
    """Binary datasets: heights count only on class 1 (as published; README, Testing).

    The predicted height is zeroed outside the predicted class-1 mask and the
    ground truth outside the true class-1 mask; NaN ground truth stays NaN so
    it is still excluded. `pred_idx`/`gt_idx` are indices into label_codes;
    an unlabelled pixel (gt_idx len(label_codes)) has no known mask, so its
    ground truth becomes NaN (excluded) rather than 0."""
    one = list(label_codes).index(1)
    gt_idx = np.asarray(gt_idx)
    pred = np.where(np.asarray(pred_idx) == one, pred_height, 0.0).astype(np.float32)
    gt = np.asarray(gt_height, np.float32)
    gt = np.where(np.isnan(gt) | (gt_idx == one), gt, 0.0).astype(np.float32)
    gt[gt_idx >= len(label_codes)] = np.nan
    return pred, gt


def _ratio(num, den):
    """num / den per class; None where den is 0 (the score is undefined)."""
    return [float(n / d) if d > 0 else None for n, d in zip(num, den)]


class ConfusionMatrix:
    """Pixel counts [true class, predicted class] accumulated over a split.

    Undefined scores are None, not 0: a class absent from both the ground
    truth and the prediction has no IoU and F1, and is left out of mIoU and
    mean F1; precision is None for a class never predicted, recall for a
    class never present. A class present in one of the two only has IoU 0
    and counts in mIoU. FWIoU weights each IoU by the class's share of
    ground-truth pixels, so absent classes weigh 0."""

    def __init__(self, num_classes):
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred_idx, gt_idx, valid=None):
        """Count the pixels whose ground truth is a class: unlabelled ones
        (index num_classes, utils/data/labels.unlabelled_index) and those False
        in `valid` are skipped."""
        pred = np.asarray(pred_idx).ravel()
        gt = np.asarray(gt_idx).ravel()
        if pred.shape != gt.shape:
            raise ValueError(f"predicted labels {np.shape(pred_idx)} != "
                             f"ground truth {np.shape(gt_idx)}")
        keep = (gt >= 0) & (gt < self.num_classes)
        if valid is not None:
            keep &= np.asarray(valid, bool).ravel()
        pred, gt = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
        self.matrix += np.bincount(gt * self.num_classes + pred,
                                   minlength=self.num_classes ** 2
                                   ).reshape(self.num_classes, self.num_classes)

    def results(self):
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        gt_count = m.sum(1)
        pred_count = m.sum(0)
        total = m.sum()
        union = gt_count + pred_count - tp
        iou = _ratio(tp, union)
        f1 = _ratio(2 * tp, gt_count + pred_count)
        defined = [v for v in iou if v is not None]
        defined_f1 = [v for v in f1 if v is not None]
        fwiou = (float(sum(c / total * v for c, v in zip(gt_count, iou) if v is not None))
                 if total > 0 else None)
        return {
            'iou': iou,
            'precision': _ratio(tp, pred_count),
            'recall': _ratio(tp, gt_count),
            'f1': f1,
            'miou': float(np.mean(defined)) if defined else None,
            'mean_f1': float(np.mean(defined_f1)) if defined_f1 else None,
            'oa': float(tp.sum() / total) if total > 0 else None,
            'fwiou': fwiou,
        }
