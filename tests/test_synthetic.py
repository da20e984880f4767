"""The built-in synthetic dataset: determinism, layout and physical consistency."""
import hashlib
import os

import numpy as np
import pytest
import tifffile

import config
from utils import settings
from utils.data import synthetic
from utils.data.checks import check_split
from utils.data.layouts import find_split, is_tile_dataset
from utils.data.samples import load_sample
from utils.errors import DatasetError

SMALL = {'train': (3, 64), 'valid': (1, 96), 'test': (1, 96)}


def digest(root):
    """{relative path: sha1 of the bytes} of every file under root."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return out


@pytest.fixture(scope='module')
def full_root(synthetic_root):
    """The dataset at its real size, generated through find_split (conftest.py)."""
    return os.path.join(synthetic_root, 'synthetic')


def use(root):
    settings.apply(['dataset_name=synthetic', f'shortcut_path={os.path.dirname(root)}'])


def test_same_seed_gives_identical_bytes(tmp_path):
    a = synthetic.ensure_synthetic(str(tmp_path / 'a'), seed=7, splits=SMALL)
    b = synthetic.ensure_synthetic(str(tmp_path / 'b'), seed=7, splits=SMALL)
    c = synthetic.ensure_synthetic(str(tmp_path / 'c'), seed=8, splits=SMALL)
    assert len(digest(a)) == 3 * 5 + 1 and digest(a) == digest(b)
    assert digest(a)['train/rgb/train_0000.tif'] != digest(c)['train/rgb/train_0000.tif']


def test_complete_data_are_kept_and_incomplete_or_other_seed_regenerated(tmp_path):
    root = synthetic.ensure_synthetic(str(tmp_path / 'synthetic'), seed=7, splits=SMALL)
    marker = os.path.join(root, synthetic.MARKER)
    first = os.stat(marker).st_mtime_ns
    synthetic.ensure_synthetic(root, seed=7, splits=SMALL)
    assert os.stat(marker).st_mtime_ns == first            # complete: skipped
    reference = digest(root)
    os.remove(marker)                                       # as if interrupted
    os.remove(os.path.join(root, 'test', 'rgb', 'test_0000.tif'))
    synthetic.ensure_synthetic(root, seed=7, splits=SMALL)
    assert digest(root) == reference
    synthetic.ensure_synthetic(root, seed=8, splits=SMALL)  # another seed replaces the data
    assert digest(root) != reference and synthetic.is_complete(root, 8, SMALL)
    assert sorted(os.listdir(tmp_path)) == ['synthetic']   # no temporary folders left


def test_foreign_folder_is_not_overwritten(tmp_path):
    root = tmp_path / 'synthetic'
    root.mkdir()
    (root / 'my_notes.txt').write_text('keep me')
    with pytest.raises(DatasetError, match='not a generated synthetic dataset'):
        synthetic.ensure_synthetic(str(root), seed=7, splits=SMALL)
    assert (root / 'my_notes.txt').read_text() == 'keep me'


def test_layout_and_sizes(full_root):
    use(full_root)
    assert config.layout == 'split_folders' and not is_tile_dataset(config)
    for split, (count, side) in synthetic.SPLITS.items():
        samples = find_split(config, split)
        assert len(samples) == count
        assert [s.name for s in samples] == [f'{split}_{i:04d}' for i in range(count)]
        sample = samples[0]
        assert sample.height == os.path.join(full_root, split, 'dsm', sample.name + '.tif')
        assert sample.labels == os.path.join(full_root, split, 'sem', sample.name + '.tif')
        rgb = tifffile.imread(sample.image)
        height = tifffile.imread(sample.height)
        sem = tifffile.imread(sample.labels)
        assert rgb.shape == (side, side, 3) and rgb.dtype == np.uint8
        assert height.shape == (side, side) and height.dtype == np.float32
        assert sem.shape == (side, side) and sem.dtype == np.uint8
        assert side > config.cropSize or split == 'train'
    check_split(config, find_split(config, 'train') + find_split(config, 'test'))


def test_heights_agree_with_classes(full_root):
    use(full_root)
    assert config.label_codes == [0, 1, 2, 3, 4, 5]
    heights = {c: [] for c in range(6)}
    nodata_images = 0
    for sample in find_split(config, 'train') + find_split(config, 'valid'):
        loaded = load_sample(config, sample)
        valid = np.isfinite(loaded.height)
        nodata_images += not valid.all()
        for c in range(6):
            heights[c].append(loaded.height[valid & (loaded.labels == c)])
    heights = {c: np.concatenate(h) for c, h in heights.items()}
    for ground in (synthetic.IMPERVIOUS, synthetic.LOW_VEG, synthetic.CLUTTER):
        assert heights[ground].size and heights[ground].min() >= 0 \
            and heights[ground].max() < 1
    building = heights[synthetic.BUILDING]
    assert building.min() >= 3 and building.max() <= 25 + 2.5 and np.ptp(building) > 15
    tree = heights[synthetic.TREE]
    assert tree.min() > 2 and tree.max() < 16
    assert 1.3 < heights[synthetic.CAR].min() and heights[synthetic.CAR].max() < 1.8
    # Every class occurs with a usable share of pixels.
    shares = np.array([heights[c].size for c in range(6)]) / sum(h.size for h in heights.values())
    assert (shares > 0.001).all(), shares
    assert 0 < nodata_images < 0.3 * 300


def test_shadow_of_a_tower_points_away_from_the_sun():
    height = np.zeros((60, 60), np.float32)
    height[20:23, 20:23] = 10.0     # shadow about 10 m * SHADOW_PX_PER_M = 8 px long
    shadow = synthetic.cast_shadow(height)
    dx, dy = synthetic.SHADOW_DIRECTION
    reach = 10 * synthetic.SHADOW_PX_PER_M
    at = lambda t: shadow[22 + int(round(t * dy)), 22 + int(round(t * dx))]  # noqa: E731
    assert at(1) and at(reach - 1)
    assert not at(reach + 2)
    assert not shadow[:20].any() and not shadow[:, :20].any()   # nothing towards the sun
    assert not shadow[height > 0].any()                          # a roof does not shade itself


def test_shadow_matches_a_pixel_by_pixel_ray_march():
    rng = np.random.default_rng(0)
    height = np.zeros((24, 24), np.float32)
    for _ in range(4):
        y, x = rng.integers(0, 20, 2)
        height[y:y + 4, x:x + 3] = rng.uniform(1, 12)
    expected = np.zeros(height.shape, bool)
    dx, dy = synthetic.SHADOW_DIRECTION
    for y in range(24):
        for x in range(24):
            for t in range(1, 40):      # walk towards the sun until the ray clears all
                qy, qx = y - int(round(t * dy)), x - int(round(t * dx))
                if qy < 0 or qx < 0:
                    break
                if height[qy, qx] > height[y, x] + t / synthetic.SHADOW_PX_PER_M:
                    expected[y, x] = True
    np.testing.assert_array_equal(synthetic.cast_shadow(height), expected)


def test_shadowed_ground_is_darker(full_root):
    use(full_root)
    lit, dark = [], []
    for sample in find_split(config, 'valid'):
        loaded = load_sample(config, sample)
        grass = loaded.labels == synthetic.LOW_VEG
        shadow = synthetic.cast_shadow(np.nan_to_num(loaded.height))
        brightness = loaded.image.mean(axis=-1)
        lit.append(brightness[grass & ~shadow])
        dark.append(brightness[grass & shadow])
    assert np.concatenate(dark).mean() < 0.75 * np.concatenate(lit).mean()
