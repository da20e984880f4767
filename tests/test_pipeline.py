"""utils/train/pipeline.py on small datasets written to disk.

The images encode where every pixel came from (red = row, green = column,
blue = which file), so each delivered crop can be traced back to its file and
compared, field by field, with load_sample + targets applied to that whole
file and indexed with numpy: an independent second path to every value.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tifffile

import config
from conftest import ROOT
from utils import distribute, settings
from utils.data import layouts, targets
from utils.data.samples import load_sample
from utils.errors import DatasetError
from utils.train import cache as train_cache, tasks
from utils.train.fields import field_specs

CROP = 32
BATCH = 4
FILE_STEP = 20      # blue value of file t: 20 * t


def _scene(rows, cols, index, rng, with_nan):
    """Image tracing each pixel's source, a sloped height with roofs, labels."""
    r, c = np.mgrid[:rows, :cols]
    image = np.stack([r, c, np.full_like(r, FILE_STEP * index)], -1).astype(np.uint8)
    height = (4 * np.sin(r / 6.0 + index) + 3 * np.cos(c / 4.0) + 0.2 * r).astype(np.float32)
    for _ in range(3):      # roofs above roof_height_threshold give edges
        y, x = rng.integers(0, rows - 12), rng.integers(0, cols - 12)
        height[y:y + 12, x:x + 10] += 80
    if with_nan:
        y, x = rng.integers(0, rows - 8), rng.integers(0, cols - 8)
        height[y:y + 8, x:x + 6] = np.nan
        height[rng.random(height.shape) < 0.02] = np.nan
    return image, height


@pytest.fixture
def tiles(tmp_path):
    """A DFC2018 tree (large-tile layout) with three small training tiles."""
    def make(with_nan=True):
        rng = np.random.default_rng(1)
        root = tmp_path / 'DFC2018'
        for folder in ('RGB', 'DSM', 'DEM', 'SEM'):
            (root / folder).mkdir(parents=True)
        # two tiles share a shape (one stack in the cache), one differs
        for t, (name, shape) in enumerate(zip(layouts.DFC2018_TILES['train'],
                                              [(70, 90), (70, 90), (96, 64)])):
            image, dsm = _scene(*shape, t, rng, with_nan)
            tifffile.imwrite(root / 'RGB' / f'{name}.tif', image)
            tifffile.imwrite(root / 'DSM' / f'{name}.tif', dsm + 10)
            tifffile.imwrite(root / 'DEM' / f'{name}.tif', np.full(shape, 10, np.float32))
            tifffile.imwrite(root / 'SEM' / f'{name}.tif',
                             rng.integers(1, 21, shape).astype(np.uint8))
        settings.apply(['dataset_name=DFC2018', f'shortcut_path={tmp_path}',
                        f'cropSize={CROP}', 'edge_flag=True', 'dae_training_samples=9',
                        'mtl_training_samples=26'])     # 6 batches of 4, 2 left over
        assert layouts.is_tile_dataset(config)
        return layouts.find_split(config, 'train')
    return make


@pytest.fixture
def patches(tmp_path):
    """A DFC2023-style split_folders tree with 10 patches, some larger than the crop."""
    def make(with_nan=True):
        rng = np.random.default_rng(2)
        root = tmp_path / 'DFC2023_test' / 'train'
        for folder in ('rgb', 'dsm', 'sem'):
            (root / folder).mkdir(parents=True)
        for t in range(10):
            shape = (CROP, CROP) if t % 3 == 0 else (CROP + 9, CROP + 5)
            image, dsm = _scene(*shape, t, rng, with_nan)
            tifffile.imwrite(root / 'rgb' / f'p{t}.tif', image)
            tifffile.imwrite(root / 'dsm' / f'p{t}.tif', dsm)
            tifffile.imwrite(root / 'sem' / f'p{t}.tif',
                             rng.integers(0, 2, shape).astype(np.uint8))
        settings.apply(['dataset_name=DFC2023_test', f'shortcut_path={tmp_path}',
                        f'cropSize={CROP}'])
        assert not layouts.is_tile_dataset(config)
        return layouts.find_split(config, 'train')
    return make


def _references(samples):
    """Full-size expected fields of every sample, straight from the other modules."""
    refs = {}
    for sample in samples:
        loaded = load_sample(config, sample)
        valid = np.isfinite(loaded.height)
        ref = dict(image=loaded.image, height=np.where(valid, loaded.height, 0),
                   mask=valid.astype(np.float32), sem=loaded.labels,
                   norm=targets.surface_normals(loaded.height, config.normalize_flag))
        if config.edge_flag:
            ref['edge'] = targets.edge_map(loaded.height, config.roof_height_threshold,
                                           config.canny_lt, config.canny_ht)
        refs[int(round(loaded.image[0, 0, 2] * 255)) // FILE_STEP] = ref
    return refs


def _collect(dataset):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset]


def _trace(batches, refs, augmented=False):
    """Check every crop against its source; returns (file, row, col) of each crop."""
    origins = []
    for batch in batches:
        assert batch['image'].shape == (BATCH, CROP, CROP, 3)
        for name, shape, dtype in [('height', (CROP, CROP, 1), np.float32),
                                   ('mask', (CROP, CROP, 1), np.float32),
                                   ('sem', (CROP, CROP), np.int32),
                                   ('norm', (CROP, CROP, 3), np.float32)]:
            assert batch[name].shape == (BATCH,) + shape and batch[name].dtype == dtype
        for name, value in batch.items():
            assert np.isfinite(value).all(), name
        assert batch['image'].min() >= 0 and batch['image'].max() <= 1
        assert set(np.unique(batch['mask'])) <= {0.0, 1.0}
        for i in range(BATCH):
            image = batch['image'][i]
            rows = np.rint(image[..., 0] * 255).astype(int)
            cols = np.rint(image[..., 1] * 255).astype(int)
            source = np.unique(np.rint(image[..., 2] * 255).astype(int) // FILE_STEP)
            assert source.size == 1
            ref = refs[int(source[0])]
            np.testing.assert_array_equal(image, ref['image'][rows, cols])
            np.testing.assert_array_equal(batch['height'][i, ..., 0], ref['height'][rows, cols])
            np.testing.assert_array_equal(batch['mask'][i, ..., 0], ref['mask'][rows, cols])
            np.testing.assert_array_equal(batch['sem'][i], ref['sem'][rows, cols])
            if 'edge' in batch:
                np.testing.assert_array_equal(batch['edge'][i, ..., 0], ref['edge'][rows, cols])
            # the crop is a square block of its source, turned or not
            top, left = rows.min(), cols.min()
            assert sorted(set(rows.ravel())) == list(range(top, top + CROP))
            assert sorted(set(cols.ravel())) == list(range(left, left + CROP))
            if augmented:
                origins.append((int(source[0]), rows[0, 0] - top, cols[0, 0] - left,
                                bool(rows[1, 0] != rows[0, 0])))
            else:
                np.testing.assert_array_equal(rows, top + np.arange(CROP)[:, None] + 0 * cols)
                np.testing.assert_array_equal(cols, left + np.arange(CROP)[None, :] + 0 * rows)
                np.testing.assert_array_equal(batch['norm'][i], ref['norm'][rows, cols])
                origins.append((int(source[0]), int(top), int(left)))
    return origins


def test_tile_batches_are_random_crops_of_the_cached_tiles(tiles):
    samples = tiles()
    refs = _references(samples)
    assert tasks.MTLTask(config).steps_per_epoch(BATCH) == 26 // BATCH
    assert tasks.DAETask(config).steps_per_epoch(BATCH) == 9 // BATCH
    dataset = tasks.MTLTask(config).train_dataset(BATCH, epoch=0)
    assert dataset.options().experimental_distribute.auto_shard_policy == \
        tf.data.experimental.AutoShardPolicy.DATA
    batches = _collect(dataset)
    assert len(batches) == 6
    origins = _trace(batches, refs)
    assert len({o[0] for o in origins}) == 3            # every tile gets picked
    assert len(set(origins)) == len(origins)            # positions vary
    masked = sum((b['mask'] == 0).sum() for b in batches)
    assert masked > 0                                   # NaN heights reached the crops, masked
    assert sum(b['edge'].sum() for b in batches) > 0


def test_tile_epochs_are_reproducible_and_resume_exactly(tiles):
    tiles()
    first = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=3))
    again = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=3))
    other = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=4))
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(first[0]['image'], other[0]['image'])
    resumed = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=3, skip_batches=4))
    assert len(resumed) == 2
    for a, b in zip(first[4:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=3, skip_batches=6)) == []
    with pytest.raises(ValueError, match='skip_batches = 7'):
        tasks.MTLTask(config).train_dataset(BATCH, epoch=3, skip_batches=7)
    config.seed = 7
    reseeded = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=3))
    assert not np.array_equal(first[0]['image'], reseeded[0]['image'])


def test_patch_epochs_are_shuffled_passes_without_the_partial_batch(patches):
    samples = patches()
    refs = _references(samples)
    assert tasks.MTLTask(config).steps_per_epoch(BATCH) == 2      # 10 patches: 2 dropped
    epochs = [_collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=e)) for e in (0, 1)]
    orders = []
    for batches in epochs:
        assert len(batches) == 2
        origins = _trace(batches, refs)
        files = [o[0] for o in origins]
        assert len(set(files)) == 8                         # each patch at most once
        orders.append(files)
        assert len({(o[1], o[2]) for o in origins}) > 1     # larger patches: random crops
    assert orders[0] != orders[1]
    resumed = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=1, skip_batches=1))
    np.testing.assert_array_equal(resumed[0]['image'], epochs[1][1]['image'])
    np.testing.assert_array_equal(resumed[0]['norm'], epochs[1][1]['norm'])


@pytest.mark.parametrize('augment', [False, True])
def test_patches_read_from_disk_equal_the_cached_ones(patches, augment):
    patches()
    config.augment = augment
    cached = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=2))
    config.mtl_preload = False
    train_cache._cache.clear()
    read = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=2))
    assert not train_cache._cache                              # nothing was cached this time
    config.mtl_preload = True
    config.preload_max_gb = 1e-6                            # too small: read from disk too
    too_big = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=2))
    assert not train_cache._cache
    for a, b, c in zip(cached, read, too_big):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])


@pytest.mark.parametrize('normalize', [True, False])
def test_augmentation_turns_every_target_and_the_normals_with_the_image(tiles, normalize):
    config.normalize_flag = normalize
    samples = tiles(with_nan=False)
    config.augment = True
    config.mtl_training_samples = 48
    refs = _references(samples)
    batches = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=0))
    origins = _trace(batches, refs, augmented=True)
    assert len({o[1:] for o in origins}) >= 6               # most of the 8 turns occur
    interior = (slice(2, -2), slice(2, -2))                 # Sobel 5x5 sees only the crop
    scale = 1 if normalize else 255
    for batch in batches:
        for height, norm in zip(batch['height'][..., 0], batch['norm']):
            expected = targets.surface_normals(height, config.normalize_flag)
            np.testing.assert_allclose(norm[interior], expected[interior], atol=1e-5 * scale)


def test_tile_with_nodata_only_in_mask(tiles):
    samples = tiles()
    loaded = load_sample(config, samples[0])
    assert np.isnan(loaded.height).any()
    config.mtl_training_samples = 64
    batches = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=5))
    for batch in batches:
        for key, value in batch.items():
            assert np.isfinite(value).all(), key
        assert (batch['height'][batch['mask'] == 0] == 0).all()


def test_distributed_dataset_on_the_default_strategy(tiles):
    tiles()
    strategy = distribute.get_strategy(config)
    dataset = tasks.MTLTask(config).train_dataset(BATCH, epoch=1)
    plain = _collect(dataset)
    spread = [{k: strategy.experimental_local_results(v)[0].numpy() for k, v in b.items()}
              for b in strategy.experimental_distribute_dataset(dataset)]
    assert len(spread) == len(plain)
    for a, b in zip(plain, spread):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_too_few_samples_for_one_batch(patches, tiles):
    patches()
    with pytest.raises(DatasetError,
                       match=r"'train' split of DFC2023_test.* 10 samples.* 16 .*mtl_batchSize"):
        tasks.MTLTask(config).steps_per_epoch(16)
    tiles()
    config.dae_training_samples = 3
    with pytest.raises(DatasetError,
                       match=r"dae_training_samples = 3 .* batch of 4.*raise dae_training"):
        tasks.DAETask(config).train_dataset(BATCH, epoch=0)
    with pytest.raises(ValueError, match="stage = 'x'"):
        tasks.make('x', config)


def test_sample_smaller_than_the_crop(tiles):
    tiles()
    config.cropSize = 128
    with pytest.raises(DatasetError, match=r"smaller than cropSize=128"):
        tasks.MTLTask(config).train_dataset(BATCH, epoch=0)


@pytest.mark.parametrize('mixed', [False, True])
def test_cache_built_tile_by_tile_holds_each_sample_as_decoded_alone(tiles, monkeypatch,
                                                                    mixed):
    """The cache's fields, unpacked, are load_sample + targets of each file
    on its own; packing in row blocks (4 rows here) changes nothing, and
    neither does a field stored 8-bit in some tiles and float32 in another
    (mixed: tile 0's image kept as float32), crops included. The samples
    go into the variables in joined slabs (unmixed) and one by one (mixed:
    SLAB_BYTES too small for two)."""
    samples = tiles()
    refs = _references(samples)
    expected_batches = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=1))
    monkeypatch.setattr(train_cache, 'PACK_ROWS', 4)
    if mixed:
        monkeypatch.setattr(train_cache, 'SLAB_BYTES', 1)
        pack = train_cache._pack

        def keep_tile_0_image(array):       # tile 0: blue = 0 (FILE_STEP * 0)
            if array.shape[-1] == 3 and not array[..., 2].any():
                return array, False
            return pack(array)
        monkeypatch.setattr(train_cache, '_pack', keep_tile_0_image)
    train_cache._cache.clear()
    cache = train_cache.cached(samples, config, tiles=True)
    samples = [cache.stored(i) for i in range(cache.size)]
    assert cache.size == 3 and cache.nbytes == sum(
        stored.nbytes for fields in samples for stored, _ in fields.values())
    assert (len(cache.fields['image'].parts) > 1) == mixed
    for fields in samples:
        blue = float(fields['image'][0][0, 0, 2]) * (1 if fields['image'][1] else 255)
        tile = round(blue) // FILE_STEP
        ref = refs[tile]
        stored_as = {name: (stored.dtype, packed) for name, (stored, packed) in fields.items()}
        assert stored_as == {'image': (np.float32, False) if mixed and tile == 0 else
                             (np.uint8, True), 'height': (np.float32, False),
                             'mask': (np.uint8, True), 'sem': (np.uint8, True),
                             'norm': (np.float32, False), 'edge': (np.uint8, True)}
        for name, dtype, _ in field_specs(config):
            got = train_cache._unpack(tf.constant(fields[name][0]), fields[name][1], dtype).numpy()
            expected = ref[name] if ref[name].ndim == 3 else ref[name][..., None]
            assert got.dtype == expected.dtype, name
            np.testing.assert_array_equal(got, expected, err_msg=name)
    for a, b in zip(expected_batches, _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=1))):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_pack_keeps_a_field_whole_when_any_row_block_is_not_8_bit(monkeypatch):
    monkeypatch.setattr(train_cache, 'PACK_ROWS', 4)
    codes = np.arange(10 * 7 * 3).reshape(10, 7, 3) % 256
    eight_bit = (codes / np.float32(255)).astype(np.float32)
    stored, packed = train_cache._pack(eight_bit)
    assert packed and stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, codes)
    off = eight_bit.copy()
    off[9, 6, 2] = 0.3                      # not k / 255, in the last block
    stored, packed = train_cache._pack(off)
    assert not packed and stored is off
    labels = np.array([[0, 255], [7, 3]], np.int32)[..., None]
    stored, packed = train_cache._pack(labels)
    assert packed and stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, labels)
    assert train_cache._pack(labels + 1)[1] is False     # 256 does not fit


EXIT_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'exit_run.py')


def _tiny_patches(root, count):
    """`count` patches of one crop each: a long epoch of quick decodes."""
    rng = np.random.default_rng(3)
    for folder in ('rgb', 'dsm', 'sem'):
        (root / folder).mkdir(parents=True)
    for t in range(count):
        image, dsm = _scene(CROP, CROP, t % 12, rng, True)
        tifffile.imwrite(root / 'rgb' / f'p{t}.tif', image)
        tifffile.imwrite(root / 'dsm' / f'p{t}.tif', dsm)
        tifffile.imwrite(root / 'sem' / f'p{t}.tif', rng.integers(0, 2, (CROP, CROP)).astype(np.uint8))


@pytest.mark.slow
@pytest.mark.parametrize('replicas', [1, 2])
@pytest.mark.parametrize('source', ['cached tiles', 'patches read from disk'])
def test_a_script_ending_with_a_live_iterator_exits(tiles, tmp_path, source, replicas):
    """Python must not hang at exit while the pipeline of a live iterator is
    producing. Reading patches from disk runs Python per sample, and whether
    a call is in flight when the interpreter finalises is a race (without
    the exit hook about half the runs hung): two runs at once. The first
    run also saves each replica's share of its first batch."""
    if source == 'cached tiles':
        tiles()
        sets, runs = ['dataset_name=DFC2018', 'mtl_training_samples=100000'], 1
    else:
        _tiny_patches(tmp_path / 'DFC2023_test' / 'train', 200)
        sets, runs = ['dataset_name=DFC2023_test', 'mtl_preload=False'], 2
    sets += [f'shortcut_path={tmp_path}', f'cropSize={CROP}', 'mtl_batchSize=2']
    shares = [str(tmp_path / 'shares.npz')]      # the first run's
    if replicas == 2:
        sets += ['multi_gpu_enabled=True', 'cpu_replicas=2']
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    procs = [subprocess.Popen([sys.executable, EXIT_RUN] + shares * (run == 0) + sets,
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for run in range(runs)]
    hung = 0
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            hung += 1
            continue
        assert proc.returncode == 0, err
        assert f"took a batch on {replicas} replica(s)" in out
    assert not hung, f"{hung} of {runs} runs took their batch but did not exit within 120 s"
    # The real pipeline through experimental_distribute_dataset: each replica
    # its own share, in order, of the global batch one device would take.
    saved = np.load(shares[0])
    parts = [saved[f'share_{i}'] for i in range(replicas)]
    assert [len(p) for p in parts] == [2] * replicas
    np.testing.assert_array_equal(np.concatenate(parts), saved['whole'])
    if replicas == 2:      # disjoint: no crop of one share is in the other
        assert not any(np.array_equal(a, b) for a in parts[0] for b in parts[1])


def test_cache_split_into_parts_gives_the_same_batches(tiles, monkeypatch):
    """Samples of one field spread over several variables (parts): the same
    stored values and the same batches as with one variable per field."""
    samples = tiles()
    config.augment = True
    whole = _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=2))
    stored = [train_cache._cache['value'].stored(i) for i in range(3)]
    # image parts: 70 rows of 90 x 3 round up to 96 rows; 96 x 64 x 3 is aligned
    monkeypatch.setattr(train_cache, 'PART_ELEMENTS', 96 * 90 * 3)
    train_cache._cache.clear()
    cache = train_cache.cached(samples, config, tiles=True)
    assert len(cache.fields['image'].parts) == 3
    assert len(cache.fields['sem'].parts) == 1
    for i in range(3):
        for name, (array, packed) in cache.stored(i).items():
            np.testing.assert_array_equal(array, stored[i][name][0], err_msg=name)
            assert packed == stored[i][name][1]
    for a, b in zip(whole, _collect(tasks.MTLTask(config).train_dataset(BATCH, epoch=2))):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    monkeypatch.setattr(train_cache, 'PART_ELEMENTS', 96 * 90 * 3 - 1)
    train_cache._cache.clear()
    with pytest.raises(DatasetError, match='image of a 70x90 sample'):
        train_cache.cached(samples, config, tiles=True)
