"""The built-in 'synthetic' dataset: aerial-looking scenes with known heights.

Generated on first use (utils/data/layouts.find_split calls ensure_synthetic)
deterministically from the seed setting, so the whole training and testing story
runs offline on a CPU in minutes.

Layout (the 'split_folders' layout, folder names rgb/ dsm/ sem/):
  <root>/train/{rgb,dsm,sem}/train_0000.tif ...   300 images 128x128
  <root>/valid/{rgb,dsm,sem}/valid_0000.tif ...     8 images 192x192
  <root>/test/{rgb,dsm,sem}/test_0000.tif ...      10 images 192x192
  <root>/GENERATED.json                            written last: the data are complete
  rgb: uint8 RGB; dsm: float32 nDSM in metres (height above the terrain);
  sem: uint8 class codes 0..5, ordered like the Vaihingen classes:
    0 impervious (roads), 1 building, 2 low vegetation (grass), 3 tree,
    4 car, 5 clutter (bare soil).
About one train image in ten has a patch of nodata (NaN) heights, as real
stereo DSMs do, so the nodata mask is exercised.

Scenes (0.5 m ground sampling distance): gently sloping terrain with grass
and bare-soil patches, straight roads with lane marks and cars, buildings
with flat roofs (parapet, roof units; 3-25 m) or gabled roofs (eaves 3-12 m
plus a 2-5 m ridge), trees with round crowns (5-15 m, larger crowns taller).
Appearance follows the heights: roof and crown faces are shaded by one sun,
and every object casts a shadow in one direction whose length is
proportional to its height (SHADOW_PX_PER_M pixels per metre).
"""
import json
import os
import shutil
import time

import cv2
import numpy as np

from utils.errors import DatasetError
from utils.geo.write import write_geotiff

VERSION = 1                 # bump when the generator changes: old data are regenerated
SPLITS = {'train': (300, 128), 'valid': (8, 192), 'test': (10, 192)}   # (count, side)
CLASSES = ('impervious', 'building', 'low_vegetation', 'tree', 'car', 'clutter')
IMPERVIOUS, BUILDING, LOW_VEG, TREE, CAR, CLUTTER = range(6)
MODALITIES = ('rgb', 'dsm', 'sem')
MARKER = 'GENERATED.json'
GSD = 0.5                   # metres per pixel
SHADOW_DIRECTION = (0.8, 0.6)   # unit (dx, dy) in pixels: shadows fall to the lower right
SHADOW_PX_PER_M = 0.8       # shadow length per metre of height (sun elevation ~68 deg)
NODATA_SHARE = 0.1          # train images with a nodata patch

_TAN_ELEVATION = 1.0 / (SHADOW_PX_PER_M * GSD)
_SUN = np.array([-SHADOW_DIRECTION[0], -SHADOW_DIRECTION[1], _TAN_ELEVATION])
_SUN /= np.linalg.norm(_SUN)    # unit vector towards the sun (x right, y down, z up)
_GABLED_ROOFS = [(165, 85, 65), (140, 70, 55), (115, 85, 70), (85, 88, 95)]
_FLAT_ROOFS = [(175, 172, 168), (195, 190, 180), (95, 95, 100), (150, 145, 135)]
_CAR_COLOURS = [(220, 220, 220), (35, 35, 40), (170, 40, 40), (50, 70, 150), (160, 165, 170)]


def smooth_noise(rng, size, cell):
    """size x size float32 noise of unit-ish amplitude varying over ~`cell` pixels."""
    coarse = rng.standard_normal((size // cell + 2, size // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def cast_shadow(height):
    """Boolean shadow mask of a height map (metres) under the dataset's sun.

    Pixel p is shadowed when some pixel q = p - t * SHADOW_DIRECTION (t > 0
    pixels, towards the sun) is higher than the sun ray through p at q:
    height[q] > height[p] + t / SHADOW_PX_PER_M. Outside the image casts nothing.
    """
    rows, cols = height.shape
    h = np.nan_to_num(height.astype(np.float32))
    shadow = np.zeros(h.shape, bool)
    longest = int(np.ceil(max(h.max(), 0) * SHADOW_PX_PER_M))
    for t in range(1, longest + 1):
        dx, dy = (int(round(t * d)) for d in SHADOW_DIRECTION)
        if dx >= cols or dy >= rows:
            break
        caster = np.zeros_like(h)       # caster[y, x] = h[y - dy, x - dx]
        caster[dy:, dx:] = h[:rows - dy, :cols - dx]
        shadow |= caster - h > t / SHADOW_PX_PER_M
    return shadow


def _minmod(forward, backward):
    """The smaller one-sided slope, 0 at a ridge: keeps walls out of roof normals."""
    return np.where(forward * backward > 0,
                    np.where(np.abs(forward) < np.abs(backward), forward, backward), 0)


def sun_shading(height):
    """Lambertian brightness factor of the surface, 1 on flat ground."""
    padded = np.pad(height.astype(np.float32), 1, mode='edge')
    centre = padded[1:-1, 1:-1]
    gx = _minmod(padded[1:-1, 2:] - centre, centre - padded[1:-1, :-2]) / GSD
    gy = _minmod(padded[2:, 1:-1] - centre, centre - padded[:-2, 1:-1]) / GSD
    cosine = (-gx * _SUN[0] - gy * _SUN[1] + _SUN[2]) / np.sqrt(1 + gx ** 2 + gy ** 2)
    return np.clip(0.35 + 0.65 * np.maximum(cosine, 0) / _SUN[2], 0.3, 1.4)


def _textured(rng, size, colour, fine, coarse=0.0):
    """size x size x 3 float colour with fine grain and optional patchiness."""
    grain = rng.standard_normal((size, size, 1)).astype(np.float32) * fine
    patches = smooth_noise(rng, size, 12)[..., None] * coarse
    return np.asarray(colour, np.float32) + grain + patches


def _rectangle(size, centre, angle, length, width):
    """uint8 mask of a rotated rectangle, and each pixel's offset across its long axis."""
    u = np.array([np.cos(angle), np.sin(angle)])
    v = np.array([-np.sin(angle), np.cos(angle)])
    corners = [centre + a * length / 2 * u + b * width / 2 * v
               for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    across = (xx - centre[0]) * v[0] + (yy - centre[1]) * v[1]
    return mask.astype(bool), across


def make_scene(rng, size):
    """One scene: (rgb uint8 HxWx3, height float32 HxW metres, sem uint8 HxW)."""
    # Ground: grass with bare-soil patches, at most 0.6 m high.
    sem = np.full((size, size), LOW_VEG, np.uint8)
    sem[smooth_noise(rng, size, 24) > rng.uniform(0.7, 1.5)] = CLUTTER
    height = np.where(sem == CLUTTER, 0.3, 0.15) * np.minimum(np.abs(smooth_noise(rng, size, 4)), 2)
    grass_tone = np.array([95, 125, 65]) + rng.uniform(-12, 12, 3)
    colour = np.where((sem == CLUTTER)[..., None],
                      _textured(rng, size, np.array([150, 125, 95]) + rng.uniform(-10, 10, 3), 8),
                      _textured(rng, size, grass_tone, 8, 10))

    # Roads (impervious) with dashed centre marks and cars driving along them.
    road = np.zeros((size, size), np.uint8)
    marks = np.zeros((size, size), np.uint8)
    base_angle = rng.uniform(0, np.pi / 2) if rng.random() < 0.3 else 0.0
    cars = []
    for i in range(rng.choice([0, 1, 1, 2])):
        angle = base_angle + i * np.pi / 2 + (rng.random() < 0.5) * np.pi / 2
        u = np.array([np.cos(angle), np.sin(angle)])
        through = rng.uniform(0.2, 0.8, 2) * size
        width = int(rng.integers(10, 16))
        ends = np.round([through - 2 * size * u, through + 2 * size * u]).astype(np.int32)
        cv2.line(road, tuple(ends[0]), tuple(ends[1]), 1, thickness=width)
        for s in np.arange(-2 * size, 2 * size, 9.0):
            a, b = np.round([through + s * u, through + (s + 4) * u]).astype(np.int32)
            cv2.line(marks, tuple(a), tuple(b), 1, thickness=1)
        for s in rng.uniform(-size, size, rng.integers(0, 5)):
            lane = rng.choice([-1, 1]) * width / 4 * np.array([-u[1], u[0]])
            cars.append((through + s * u + lane, angle))
    on_road = road.astype(bool)
    sem[on_road] = IMPERVIOUS
    height[on_road] = 0.02 * np.minimum(np.abs(smooth_noise(rng, size, 3)), 2)[on_road]
    asphalt = _textured(rng, size, np.array([100, 100, 104]) + rng.uniform(-10, 10), 5)
    asphalt[marks.astype(bool)] = (215, 215, 205)
    colour[on_road] = asphalt[on_road]
    for centre, angle in cars:
        body, _ = _rectangle(size, centre, angle, 9, 4.5)
        body &= on_road
        sem[body] = CAR
        height[body] = rng.uniform(1.4, 1.7)
        paint = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]
        colour[body] = _textured(rng, size, paint, 4)[body]

    # Buildings, set back from roads and from each other.
    occupied = cv2.dilate(road, np.ones((7, 7), np.uint8)).astype(bool)
    wanted = int(rng.integers(1, size * size // 2800 + 2))
    placed = 0
    for _ in range(6 * wanted):
        if placed == wanted:
            break
        width = rng.uniform(14, 34)
        length = min(width * rng.uniform(1.0, 1.8), 0.7 * size)
        angle = base_angle + rng.integers(2) * np.pi / 2 + rng.normal(0, 0.05) \
            if rng.random() < 0.8 else rng.uniform(0, np.pi)
        centre = rng.uniform(-0.1, 1.1, 2) * size
        mask, across = _rectangle(size, centre, angle, length, width)
        if mask.sum() < 40 or (mask & occupied).any():
            continue
        placed += 1
        occupied |= cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        gabled = rng.random() < 0.5
        palette = _GABLED_ROOFS if gabled else _FLAT_ROOFS
        roof_colour = np.array(palette[rng.integers(len(palette))], np.float32)
        if gabled:
            eave, ridge = rng.uniform(3, 12), rng.uniform(2, 5)
            roof = eave + ridge * np.clip(1 - np.abs(across) / (width / 2), 0, 1)
            paint = _textured(rng, size, roof_colour + rng.uniform(-10, 10, 3), 5)
        else:
            roof = np.full((size, size), rng.uniform(3, 25), np.float32)
            paint = _textured(rng, size, roof_colour + rng.uniform(-10, 10, 3), 4, 4)
            rim = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            roof = roof + 0.5 * rim
            paint[rim] = roof_colour * 0.8
            for _ in range(rng.integers(0, 3)):     # rooftop units
                unit, _ = _rectangle(size, centre + rng.uniform(-0.25, 0.25, 2) * width,
                                     angle, rng.uniform(3, 6), rng.uniform(3, 5))
                unit &= mask & ~rim
                roof = roof + 1.5 * unit
                paint[unit] = (185, 185, 185)
        sem[mask] = BUILDING
        height[mask] = roof[mask]
        colour[mask] = paint[mask]

    # Trees in clusters; a crown covers whatever is lower than it.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    leaves = _textured(rng, size, np.array([45, 85, 40]) + rng.uniform(-8, 8, 3), 10, 8)
    bumps = 0.3 * smooth_noise(rng, size, 2)
    buildings = sem == BUILDING
    for _ in range(rng.integers(0, size * size // 5000 + 3)):
        cluster = rng.uniform(0, 1, 2) * size
        for _ in range(rng.integers(1, 7)):
            x, y = cluster + rng.normal(0, 10, 2)
            radius = rng.uniform(3.5, 8)
            if not (0 <= x < size and 0 <= y < size) or buildings[int(y), int(x)]:
                continue
            top = np.clip(3 + 1.3 * radius + rng.normal(0, 1.5), 5, 15)
            distance = np.hypot(xx - x, yy - y) / radius
            crown = top * (0.6 + 0.4 * np.sqrt(np.clip(1 - distance ** 2, 0, 1))) + bumps
            inside = (distance < 1) & (crown > height)
            sem[inside] = TREE
            height[inside] = crown[inside]
            colour[inside] = leaves[inside]

    # Light: terrain slope, roof and crown faces, cast shadows, camera.
    terrain = (rng.normal(0, 0.04) * xx + rng.normal(0, 0.04) * yy) * GSD \
        + 1.5 * smooth_noise(rng, size, 48)
    colour *= (sun_shading(terrain) * sun_shading(height))[..., None]
    shadow = cv2.GaussianBlur(cast_shadow(height).astype(np.float32), (3, 3), 0.7)
    colour *= 1 - shadow[..., None] * (1 - np.array([0.42, 0.45, 0.55], np.float32))
    colour = colour * rng.uniform(0.9, 1.1) + rng.normal(0, 3, colour.shape)
    colour = cv2.GaussianBlur(colour.astype(np.float32), (3, 3), 0.5)
    rgb = np.clip(np.round(colour), 0, 255).astype(np.uint8)
    return rgb, height.astype(np.float32), sem


def _with_nodata(rng, height):
    """A copy with an elliptic patch of NaN heights (a stereo matching gap)."""
    size = height.shape[0]
    gap = np.zeros(height.shape, np.uint8)
    centre = tuple(int(c) for c in rng.integers(0, size, 2))
    axes = tuple(int(a) for a in rng.integers(4, 12, 2))
    cv2.ellipse(gap, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return np.where(gap.astype(bool), np.float32(np.nan), height)


def _description(seed, splits):
    return {'version': VERSION, 'seed': int(seed),
            'splits': {k: list(v) for k, v in splits.items()}, 'classes': list(CLASSES)}


def generate(root, seed, splits=SPLITS):
    """Write every split into `root` (a new or empty folder); the marker last."""
    for index, (split, (count, size)) in enumerate(splits.items()):
        folders = {m: os.path.join(root, split, m) for m in MODALITIES}
        for folder in folders.values():
            os.makedirs(folder, exist_ok=True)
        for i in range(count):
            # One generator per image: any image can be reproduced on its own.
            rng = np.random.default_rng([seed, index, i])
            rgb, height, sem = make_scene(rng, size)
            if split == 'train' and rng.random() < NODATA_SHARE:
                height = _with_nodata(rng, height)
            name = f'{split}_{i:04d}.tif'
            write_geotiff(os.path.join(folders['rgb'], name), rgb)
            write_geotiff(os.path.join(folders['dsm'], name), height)
            write_geotiff(os.path.join(folders['sem'], name), sem)
    with open(os.path.join(root, MARKER), 'w') as f:
        json.dump(_description(seed, splits), f, indent=1)


def is_complete(root, seed, splits=SPLITS):
    """Whether `root` holds finished data of this generator version and seed."""
    try:
        with open(os.path.join(root, MARKER)) as f:
            return json.load(f) == _description(seed, splits)
    except (OSError, ValueError):
        return False


def ensure_synthetic(root, seed, splits=SPLITS):
    """Generate the dataset into `root` unless it is already complete.

    The data depend on `seed` (the seed setting); data of another seed or
    generator version are replaced. Generation happens in a temporary
    sibling folder that is renamed into place, so concurrent workers and
    interrupted runs never see half-written data.
    """
    root = os.path.normpath(root)
    if is_complete(root, seed, splits):
        return root
    if os.path.isdir(root) and not set(os.listdir(root)) <= set(splits) | {MARKER}:
        raise DatasetError(f"{root} exists but is not a generated synthetic dataset (it holds "
                           f"other files). Fix: move it away, or set shortcut_path elsewhere.")
    print(f"Generating the synthetic dataset in {root} (seed {seed}) ...", flush=True)
    start = time.time()
    parent = os.path.dirname(root) or '.'
    os.makedirs(parent, exist_ok=True)
    temporary = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        generate(temporary, seed, splits)
        if is_complete(root, seed, splits):     # another worker finished first
            return root
        if os.path.isdir(root):     # incomplete or another seed: replace
            stale = f"{root}.old-{os.getpid()}"
            os.rename(root, stale)
            shutil.rmtree(stale)
        try:
            os.rename(temporary, root)
        except OSError:
            if not is_complete(root, seed, splits):
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    print(f"Synthetic dataset ready ({time.time() - start:.1f} s).", flush=True)
    return root
