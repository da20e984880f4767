"""Geometric targets made from a height map: surface normals and edges.

Both follow the published recipe (Elhousni et al., IEEE Access 2021, and
its research code). Nodata (NaN) heights are first replaced by the value of the nearest
valid pixel: unlike filling with 0 or the mean, this creates no artificial
step at the border of a hole, so the normals and edges next to nodata stay
those of the surrounding surface. The training mask keeps the filled pixels
themselves out of the loss.
"""
import cv2
import numpy as np


def fill_nodata(height):
    """`height` as float64 with every NaN replaced by its nearest valid value.

    All-NaN input gives zeros (nothing to copy from).
    """
    height = np.array(height, dtype=np.float64)     # a copy, the caller's stays as it is
    invalid = ~np.isfinite(height)
    if not invalid.any():
        return height
    if invalid.all():
        return np.zeros_like(height)
    # The distance transform labels every pixel with the nearest zero
    # (= valid) pixel; each valid pixel has its own label.
    _, labels = cv2.distanceTransformWithLabels(
        invalid.astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    value_of_label = np.zeros(labels.max() + 1, dtype=np.float64)
    value_of_label[labels[~invalid]] = height[~invalid]
    return value_of_label[labels]


NORMAL_ROWS = 256    # rows of normals computed at a time (float64 temporaries)


def normal_scale(normalize):
    """The top of the stored normals' range: 1, or 255 without normalize_flag."""
    return 1.0 if normalize else 255.0


def surface_normals(height, normalize):
    """Unit normals of the height map, HxWx3 float32 stored as (n + 1) / 2.

    n = (-zx, -zy, 1) / |.| with zx, zy the raw OpenCV Sobel (ksize=5)
    derivatives along columns and rows, as published (not divided by the
    kernel's gain of 128). Values in [0, 1], or [0, 255] when `normalize`
    (normalize_flag) is False. Computed in blocks of rows, each with the
    two rows on either side the kernel reaches, so a full-size tile needs
    little more memory than its result.
    """
    h = fill_nodata(height)
    rows = h.shape[0]
    stored = np.empty(h.shape + (3,), np.float32)
    for top in range(0, rows, NORMAL_ROWS):
        bottom = min(top + NORMAL_ROWS, rows)
        lo, hi = max(top - 2, 0), min(bottom + 2, rows)
        block = h[lo:hi]
        inner = slice(top - lo, bottom - lo)
        zx = cv2.Sobel(block, cv2.CV_64F, 1, 0, ksize=5)[inner]
        zy = cv2.Sobel(block, cv2.CV_64F, 0, 1, ksize=5)[inner]
        n = np.stack([-zx, -zy, np.ones_like(zx)], axis=-1)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        n = (n + 1.0) / 2.0 * normal_scale(normalize)
        stored[top:bottom] = n
    return stored


def edge_map(height, threshold, canny_lt, canny_ht):
    """Height edges, HxW float32 in {0, 1}.

    Recipe: heights outside 0..255 are min-max scaled to 0..255; binary
    threshold at `threshold` (roof_height_threshold); Gaussian blur 5x5;
    opening with a 3x3 kernel, iterations=2; Canny(canny_lt, canny_ht).
    The threshold is applied to the scaled float heights, which is the uint8
    recipe without its rounding step.
    """
    h = fill_nodata(height)
    low, high = h.min(), h.max()
    if low < 0 or high > 255:
        h = (h - low) / (high - low) * 255.0 if high > low else np.zeros_like(h)
    _, binary = cv2.threshold(h.astype(np.float32), threshold, 255,
                              cv2.THRESH_BINARY)
    blurred = cv2.GaussianBlur(binary.astype(np.uint8), (5, 5), 0)
    opened = cv2.morphologyEx(blurred, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8),
                              iterations=2)
    edges = cv2.Canny(opened, canny_lt, canny_ht)
    return (edges / 255.0).astype(np.float32)
