"""utils/evaluate/metrics.py against hand-computed values."""
import math

import numpy as np
import pytest

from utils.evaluate import metrics


def test_perfect_prediction():
    gt = np.array([[0.0, 1.0], [2.5, 10.0]], np.float32)
    m = metrics.height_metrics(gt.copy(), gt)
    assert m == {'mse': 0.0, 'mae': 0.0, 'rmse': 0.0, 'delta1': 1.0, 'delta2': 1.0,
                 'delta3': 1.0}


def test_constant_offset():
    gt = np.array([[4.0, 8.0], [10.0, 20.0]], np.float32)
    m = metrics.height_metrics(gt + 2.0, gt)
    assert m['mse'] == pytest.approx(4.0)
    assert m['mae'] == pytest.approx(2.0)
    assert m['rmse'] == pytest.approx(2.0)
    # ratios 6/4=1.5, 10/8=1.25, 12/10=1.2, 22/20=1.1
    # delta1 (< 1.25): 1.2, 1.1 -> 2/4 (1.25 itself is not below 1.25)
    # delta2 (< 1.5625): 1.5, 1.25, 1.2, 1.1 -> 4/4
    assert m['delta1'] == pytest.approx(0.5)
    assert m['delta2'] == pytest.approx(1.0)
    assert m['delta3'] == pytest.approx(1.0)


def test_delta_thresholds_and_ratio_both_ways():
    gt = np.full(5, 10.0)
    # ratios: 1.24 (under), 1/0.81 = 1.2346 (under), 1.5 (delta2 only),
    # 1.9 (delta3 only: 1.25^3 = 1.953), 10/4 = 2.5 (none)
    pred = np.array([12.4, 8.1, 15.0, 19.0, 4.0])
    m = metrics.height_metrics(pred, gt)
    assert m['delta1'] == pytest.approx(2 / 5)
    assert m['delta2'] == pytest.approx(3 / 5)
    assert m['delta3'] == pytest.approx(4 / 5)


def test_heights_at_or_below_zero_are_clamped_for_delta_only():
    gt = np.array([0.0, -1.0, 0.0, 5.0])
    pred = np.array([-2.0, 0.0, 1.0, 5.0])
    m = metrics.height_metrics(pred, gt)
    # pixels 0 and 1: both sides clamped to eps -> ratio 1 (accurate);
    # pixel 2: 1 / eps is huge -> inaccurate; pixel 3 exact.
    assert m['delta1'] == pytest.approx(3 / 4)
    # the errors themselves use the raw values
    assert m['mae'] == pytest.approx((2 + 1 + 1 + 0) / 4)
    assert m['mse'] == pytest.approx((4 + 1 + 1 + 0) / 4)


def test_nan_ground_truth_and_mask_are_excluded():
    gt = np.array([[1.0, np.nan], [3.0, 4.0]])
    pred = np.array([[2.0, 100.0], [3.0, 0.0]])
    m = metrics.height_metrics(pred, gt)
    assert m['mse'] == pytest.approx((1 + 0 + 16) / 3)
    assert m['mae'] == pytest.approx((1 + 0 + 4) / 3)
    valid = np.array([[True, True], [True, False]])
    m = metrics.height_metrics(pred, gt, valid)
    assert m['mse'] == pytest.approx(0.5)
    assert m['rmse'] == pytest.approx(math.sqrt(0.5))


def test_no_valid_pixel_gives_nan():
    m = metrics.height_metrics(np.zeros(3), np.full(3, np.nan))
    assert all(math.isnan(v) for v in m.values())


def test_binary_masking():
    pred_h = np.array([5.0, 6.0, 7.0, 8.0])
    gt_h = np.array([4.0, 6.0, np.nan, 9.0])
    pred_idx = np.array([1, 0, 1, 1])
    gt_idx = np.array([1, 1, 0, 0])
    p, g = metrics.mask_binary_heights(pred_h, gt_h, pred_idx, gt_idx, [0, 1])
    np.testing.assert_array_equal(p, [5.0, 0.0, 7.0, 8.0])
    np.testing.assert_array_equal(g, [4.0, 6.0, np.nan, 0.0])
    m = metrics.height_metrics(p, g)
    assert m['mse'] == pytest.approx((1 + 36 + 64) / 3)
    assert metrics.is_binary([0, 1]) and metrics.is_binary([1, 0])
    assert not metrics.is_binary([0, 1, 2]) and not metrics.is_binary([(0, 0, 0), (1, 1, 1)])


def test_binary_masking_leaves_unlabelled_pixels_out():
    # The last pixel is unlabelled (index 2 = len(codes)): whether it is class 1 is unknown.
    p, g = metrics.mask_binary_heights(np.array([5.0, 6.0, 7.0]), np.array([4.0, 6.0, 9.0]),
                                       np.array([1, 0, 1]), np.array([1, 0, 2]), [0, 1])
    np.testing.assert_array_equal(p, [5.0, 0.0, 7.0])
    np.testing.assert_array_equal(g, [4.0, 0.0, np.nan])
    assert metrics.height_metrics(p, g)['mse'] == pytest.approx((1 + 0) / 2)


def test_confusion_matrix_known_case():
    # rows truth, cols prediction, 3 classes; class 2 absent from both.
    # truth 0: 3 px -> predicted 0,0,1 ; truth 1: 2 px -> predicted 1,0
    gt = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 0])
    cm = metrics.ConfusionMatrix(3)
    cm.update(pred[:2], gt[:2])
    cm.update(pred[2:], gt[2:])
    np.testing.assert_array_equal(cm.matrix, [[2, 1, 0], [1, 1, 0], [0, 0, 0]])
    r = cm.results()
    # class 0: TP 2, FP 1, FN 1 -> IoU 2/4, P 2/3, R 2/3, F1 2/3
    # class 1: TP 1, FP 1, FN 1 -> IoU 1/3, P 1/2, R 1/2, F1 1/2
    assert r['iou'][:2] == pytest.approx([0.5, 1 / 3])
    assert r['iou'][2] is None and r['f1'][2] is None
    assert r['precision'][:2] == pytest.approx([2 / 3, 0.5])
    assert r['recall'][:2] == pytest.approx([2 / 3, 0.5])
    assert r['f1'][:2] == pytest.approx([2 / 3, 0.5])
    assert r['miou'] == pytest.approx((0.5 + 1 / 3) / 2)
    assert r['mean_f1'] == pytest.approx((2 / 3 + 0.5) / 2)
    assert r['oa'] == pytest.approx(3 / 5)
    assert r['fwiou'] == pytest.approx(3 / 5 * 0.5 + 2 / 5 * (1 / 3))


def test_confusion_class_only_predicted_counts_as_zero_iou():
    cm = metrics.ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([0, 0]))
    r = cm.results()
    assert r['iou'] == pytest.approx([0.5, 0.0])
    assert r['recall'][1] is None and r['precision'][1] == 0.0
    assert r['miou'] == pytest.approx(0.25)
    assert r['fwiou'] == pytest.approx(0.5)


def test_confusion_valid_mask_and_out_of_range_labels_ignored():
    cm = metrics.ConfusionMatrix(2)
    cm.update(np.array([[0, 1], [1, 1]]), np.array([[0, -1], [1, 0]]),
              valid=np.array([[True, True], [True, False]]))
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [0, 1]])


def test_confusion_skips_unlabelled_ground_truth():
    # 3 classes; ground-truth index 3 (= len(label_codes)) is unlabelled.
    gt = np.array([[0, 3, 1], [3, 2, 2], [1, 3, 0]])
    pred = np.array([[0, 2, 1], [0, 2, 1], [0, 1, 0]])
    cm = metrics.ConfusionMatrix(3)
    cm.update(pred, gt)
    # Labelled pixels (truth -> prediction): 0->0, 1->1, 2->2, 2->1, 1->0, 0->0.
    np.testing.assert_array_equal(cm.matrix, [[2, 0, 0], [1, 1, 0], [0, 1, 1]])
    r = cm.results()
    assert r['oa'] == pytest.approx(4 / 6)
    # IoU = TP / (TP + FN + FP): class 0 2/(2+0+1), class 1 1/(1+1+1), class 2 1/(1+1+0).
    assert r['iou'] == pytest.approx([2 / 3, 1 / 3, 1 / 2])
