"""Surface normals and edge maps against hand-computed geometry."""
import cv2
import numpy as np
import pytest

import config
from utils.data import targets

# OpenCV's 5x5 Sobel x kernel is outer([1,4,6,4,1], [-1,-2,0,2,1]). On z = a*x
# it sums to a * (1+4+6+4+1) * (-1*-2 + -2*-1 + 2*1 + 1*2) = a * 16 * 8 = 128 a.
SOBEL5_GAIN = 128.0


def edge_map(height):
    """targets.edge_map with config.py's settings."""
    return targets.edge_map(height, config.roof_height_threshold, config.canny_lt,
                             config.canny_ht)


def plane(a, b, rows=40, cols=50):
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    return a * xx + b * yy + 3.0


@pytest.mark.parametrize('a,b', [(0.002, -0.003), (-0.01, 0.0), (0.0, 0.0)])
def test_normals_of_a_plane_are_the_analytic_normal(a, b):
    n = np.array([-SOBEL5_GAIN * a, -SOBEL5_GAIN * b, 1.0])
    expected = (n / np.linalg.norm(n) + 1) / 2
    got = targets.surface_normals(plane(a, b), config.normalize_flag)
    assert got.shape == (40, 50, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got[3:-3, 3:-3], np.broadcast_to(expected, (34, 44, 3)),
                               atol=1e-6)


def test_normals_scaled_to_255_without_normalize_flag():
    config.normalize_flag = False
    n = np.array([-SOBEL5_GAIN * 0.004, 0.0, 1.0])
    expected = (n / np.linalg.norm(n) + 1) / 2 * 255
    got = targets.surface_normals(plane(0.004, 0.0), config.normalize_flag)
    np.testing.assert_allclose(got[10, 10], expected, rtol=1e-5)


def test_nan_is_filled_with_the_nearest_valid_height():
    height = np.array([[1.0, np.nan, np.nan, np.nan, 5.0]])
    np.testing.assert_array_equal(targets.fill_nodata(height), [[1, 1, 1, 5, 5]])
    assert (targets.fill_nodata(np.full((3, 3), np.nan)) == 0).all()


def test_normals_next_to_nodata_are_those_of_the_flat_surroundings():
    height = np.full((30, 30), 4.0)
    height[10:20, 10:20] = np.nan
    got = targets.surface_normals(height, config.normalize_flag)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, np.broadcast_to([0.5, 0.5, 1.0], got.shape), atol=1e-6)


@pytest.mark.parametrize('block', [1, 5, 37, 1000])
@pytest.mark.parametrize('normalize', [True, False])
def test_normals_in_blocks_of_rows_equal_the_whole_image_formula(monkeypatch, block,
                                                                 normalize):
    """Blocks see the two rows either side the 5x5 kernel reaches: bit for bit
    the published formula applied to the whole map at once."""
    config.normalize_flag = normalize
    rng = np.random.default_rng(3)
    height = rng.normal(0, 5, (38, 23)).cumsum(0)
    height[rng.random(height.shape) < 0.05] = np.nan
    h = targets.fill_nodata(height)
    zx = cv2.Sobel(h, cv2.CV_64F, 1, 0, ksize=5)
    zy = cv2.Sobel(h, cv2.CV_64F, 0, 1, ksize=5)
    n = np.stack([-zx, -zy, np.ones_like(h)], axis=-1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    expected = ((n + 1.0) / 2.0 * (1.0 if normalize else 255.0)).astype(np.float32)
    monkeypatch.setattr(targets, 'NORMAL_ROWS', block)
    np.testing.assert_array_equal(targets.surface_normals(height, normalize), expected)


def box_edges(height, top, left, bottom, right):
    edges = edge_map(height)
    assert edges.dtype == np.float32 and set(np.unique(edges)) <= {0.0, 1.0}
    yy, xx = np.mgrid[0:height.shape[0], 0:height.shape[1]]
    # Distance (Chebyshev) of each pixel to the box outline.
    inside = (yy >= top) & (yy < bottom) & (xx >= left) & (xx < right)
    to_outline = np.where(inside,
                          np.minimum.reduce([yy - top, bottom - 1 - yy, xx - left, right - 1 - xx]),
                          np.maximum.reduce([top - yy, yy - (bottom - 1), left - xx,
                                             xx - (right - 1)]))
    return edges, to_outline


def test_edges_of_a_box_lie_on_its_outline():
    height = np.zeros((64, 80))
    height[20:44, 30:62] = 100.0    # above roof_height_threshold (50), within 0..255
    edges, to_outline = box_edges(height, 20, 30, 44, 62)
    assert edges.any()
    assert (np.abs(to_outline[edges > 0]) <= 2).all()
    # Every straight side is found (corners are rounded off by blur and opening).
    for side in (edges[18:23, 36:56], edges[41:46, 36:56],
                 edges[26:38, 28:33], edges[26:38, 59:64]):
        assert side.any(axis=0).all() or side.any(axis=1).all()


def test_box_below_threshold_has_no_edges():
    config.roof_height_threshold = 50        # the published value
    height = np.zeros((64, 80))
    height[20:44, 30:62] = 40.0
    assert not edge_map(height).any()


def test_heights_outside_0_255_are_scaled_first():
    # Scaled -20..30 -> 0..255 the box becomes 255 and the ground 0, so the box
    # passes the threshold although 30 < 50 in metres.
    height = np.full((64, 80), -20.0)
    height[20:44, 30:62] = 30.0
    height[0, 0] = np.nan
    edges, to_outline = box_edges(height, 20, 30, 44, 62)
    assert edges.any() and (np.abs(to_outline[edges > 0]) <= 2).all()
