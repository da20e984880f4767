"""Discovery and loading of every dataset layout on small hand-made trees."""
import os

import cv2
import numpy as np
import pytest
import tifffile

import config
from utils import settings
from utils.data import layouts
from utils.data.checks import check_split
from utils.data.labels import describe_unlabelled, read_labels, unlabelled_index
from utils.data.layouts import Sample, find_split, is_tile_dataset
from utils.data.samples import correct_dfc2018, load_sample, read_height, read_image
from utils.errors import DatasetError

from dataset_files import (SIZE, VAIHINGEN_AREAS, colour_labels, gdal_tif, make_dfc2019,
                           make_split_folders, make_vaihingen, rgb, tif)


def use(tmp_path, name, *more):
    settings.apply([f'dataset_name={name}', f'shortcut_path={tmp_path}', f'cropSize={SIZE}',
                    *more])
    return os.path.join(str(tmp_path), name)


# ------------------------------------------------------------------ Vaihingen

def test_vaihingen_splits_are_the_published_areas(tmp_path):
    root = use(tmp_path, 'Vaihingen')
    make_vaihingen(root)
    for split, areas in VAIHINGEN_AREAS.items():
        samples = find_split(config, split)
        assert [s.name for s in samples] == [f'top_mosaic_09cm_area{a}' for a in areas]
        assert samples[0].height == f'{root}/NDSM/dsm_09cm_matching_area{areas[0]}.jpg'
    assert is_tile_dataset(config)
    config.train_valid_flag = False
    assert len(find_split(config, 'train')) == 13 + 3
    # The ISPRS nDSM file name is accepted as well.
    os.rename(f'{root}/NDSM/dsm_09cm_matching_area28.jpg',
              f'{root}/NDSM/dsm_09cm_matching_area28_normalized.jpg')
    assert find_split(config, 'valid')[0].height.endswith('area28_normalized.jpg')


def test_vaihingen_loading(tmp_path):
    root = use(tmp_path, 'Vaihingen')
    make_vaihingen(root)
    sample = find_split(config, 'valid')[1]    # area 32
    loaded = load_sample(config, sample)
    assert loaded.image.dtype == np.float32 and loaded.image.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(loaded.image, 32 / 255, rtol=1e-6)
    assert loaded.height.dtype == np.float32 and (loaded.height == 32).all()  # 8-bit as stored
    assert loaded.labels.dtype == np.int32 and (loaded.labels == 32 % 6).all()
    check_split(config, find_split(config, 'test'))


def test_vaihingen_label_colours_map_to_their_indices(tmp_path):
    use(tmp_path, 'Vaihingen')
    indices = np.arange(36).reshape(6, 6) % 6
    path = f'{tmp_path}/labels.tif'
    tif(path, colour_labels(indices))
    np.testing.assert_array_equal(read_labels(config, path), indices)
    # Blue (0,0,255) is building = 1 and red (255,0,0) clutter = 5 in the ISPRS legend.
    tif(path, np.array([[[0, 0, 255], [255, 0, 0]]], np.uint8))
    np.testing.assert_array_equal(read_labels(config, path), [[1, 5]])
    # OpenCV stores BGR: written as BGR (255,0,0) the first pixel is blue = building.
    cv2.imwrite(f'{tmp_path}/labels.png', np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8))
    np.testing.assert_array_equal(read_labels(config, f'{tmp_path}/labels.png'), [[1, 5]])


def test_unknown_label_colour_is_named(tmp_path):
    use(tmp_path, 'Vaihingen')
    path = f'{tmp_path}/labels.tif'
    tif(path, np.array([[[0, 0, 255], [12, 34, 56]]], np.uint8))
    with pytest.raises(DatasetError, match=r'labels\.tif.*\(12, 34, 56\)'):
        read_labels(config, path)


@pytest.mark.parametrize('interleave', ['pixel', 'band'])
def test_eroded_vaihingen_boundary_is_unlabelled(tmp_path, interleave):
    use(tmp_path, 'Vaihingen')
    assert config.unlabelled_code == (0, 0, 0)
    # white, black, blue / red, black, yellow: ISPRS indices 0, 1 (blue), 5 (red),
    # 4 (yellow); black is the boundary band, index 6 (after the six classes).
    image = np.array([[[255, 255, 255], [0, 0, 0], [0, 0, 255]],
                      [[255, 0, 0], [0, 0, 0], [255, 255, 0]]], np.uint8)
    path = f'{tmp_path}/eroded.tif'
    gdal_tif(path, image, interleave=interleave)
    np.testing.assert_array_equal(read_labels(config, path), [[0, 6, 1], [5, 6, 4]])
    # Another colour beside the black is still an error naming the file and that colour only.
    image[0, 0] = (12, 34, 56)
    gdal_tif(path, image, interleave=interleave)
    with pytest.raises(DatasetError, match=r'eroded\.tif: label values \[\(12, 34, 56\)\] '
                                           r'are not in label_codes .* \(1 pixels\)'):
        read_labels(config, path)


def test_black_is_an_unknown_colour_without_an_unlabelled_code(tmp_path):
    use(tmp_path, 'Vaihingen', 'unlabelled_code=None')
    path = f'{tmp_path}/eroded.tif'
    gdal_tif(path, np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DatasetError, match=r'eroded\.tif: label values \[\(0, 0, 0\)\]'):
        read_labels(config, path)


def test_vaihingen_missing_partner_is_named(tmp_path):
    root = use(tmp_path, 'Vaihingen')
    make_vaihingen(root)
    os.remove(f'{root}/NDSM/dsm_09cm_matching_area28.jpg')
    with pytest.raises(DatasetError, match='dsm_09cm_matching_area28'):
        find_split(config, 'valid')


def test_missing_dataset_root_shows_the_expected_tree(tmp_path):
    use(tmp_path, 'Vaihingen')
    with pytest.raises(DatasetError) as err:
        find_split(config, 'train')
    message = str(err.value)
    assert os.path.join(str(tmp_path), 'Vaihingen') in message
    assert 'NDSM/dsm_09cm_matching_area<N>.jpg' in message and 'shortcut_path' in message


def test_missing_label_folder_is_an_error_only_with_sem_flag(tmp_path):
    root = use(tmp_path, 'Vaihingen')
    make_vaihingen(root)
    for name in os.listdir(f'{root}/SEM'):
        os.remove(f'{root}/SEM/{name}')
    os.rmdir(f'{root}/SEM')
    with pytest.raises(DatasetError, match='SEM.*sem_flag'):
        find_split(config, 'train')
    config.sem_flag = False
    sample = find_split(config, 'train')[0]
    assert sample.labels is None and load_sample(config, sample).labels is None


# ------------------------------------------------------------------ DFC2018

def test_dfc2018_outlier_rule_by_hand():
    dsm = np.array([[10.0, 2000.0], [5.0, -5000.0]])
    # In-range values 10 and 5: 2000 -> 10 (max), -5000 -> 5 (min).
    np.testing.assert_array_equal(correct_dfc2018(dsm), [[10, 10], [5, 5]])
    dem = np.array([[1.0, np.nan], [-9999.0, 2.0]])
    fixed = correct_dfc2018(dem)
    assert fixed[0, 0] == 1 and np.isnan(fixed[0, 1]) and fixed[1, 0] == 1 and fixed[1, 1] == 2
    assert np.isnan(correct_dfc2018(np.full((2, 2), 5000.0))).all()


def test_dfc2018_unclassified_pixels_are_unlabelled(tmp_path):
    use(tmp_path, 'DFC2018')
    assert config.unlabelled_code == 0
    path = f'{tmp_path}/UH_NAD83_272056_3289689.tif'
    labels = np.array([[0, 1, 20], [5, 0, 2]], np.uint8)
    gdal_tif(path, labels, crs='EPSG:26915')
    # Codes 1..20 are indices 0..19; unclassified 0 is index 20, which no class has.
    np.testing.assert_array_equal(read_labels(config, path), [[20, 0, 19], [4, 20, 1]])
    assert unlabelled_index(config) == 20
    labels[0, 0] = 21
    gdal_tif(path, labels, crs='EPSG:26915')
    with pytest.raises(DatasetError, match=r'3289689\.tif: label values \[21\] are not in '
                                           r'label_codes \[1, 2, .* \(1 pixels\)\. Fix: '):
        read_labels(config, path)
    settings.apply(['unlabelled_code=None'])
    labels[0, 0] = 3
    gdal_tif(path, labels, crs='EPSG:26915')
    with pytest.raises(DatasetError, match=r'3289689\.tif: label values \[0\] .*\(1 pixels\)'):
        read_labels(config, path)


def test_dfc2018_height_is_dsm_minus_dem(tmp_path):
    root = use(tmp_path, 'DFC2018')
    tiles = {'train': ['UH_NAD83_272056_3289689', 'UH_NAD83_272652_3289689',
                       'UH_NAD83_273248_3289689'], 'valid': ['UH_NAD83_273844_3289689']}
    dsm = np.full((SIZE, SIZE), 30.0, np.float32)
    dsm[0, 0], dsm[0, 1], dsm[0, 2] = 40.0, 1e38, -1e38     # max of the rest 40, min 30
    dem = np.full((SIZE, SIZE), 20.0, np.float32)
    dem[1, 1] = 22.0
    for tile in sum(tiles.values(), []):
        tif(f'{root}/RGB/{tile}.tif', rgb())
        tif(f'{root}/DSM/{tile}.tif', dsm)
        tif(f'{root}/DEM/{tile}.tif', dem)
        tif(f'{root}/SEM/{tile}.tif', np.full((SIZE, SIZE), 20, np.uint8))
    samples = find_split(config, 'train')
    assert [s.name for s in samples] == tiles['train']
    assert samples[0].dem == f"{root}/DEM/{tiles['train'][0]}.tif"
    loaded = load_sample(config, find_split(config, 'valid')[0])
    expected = np.full((SIZE, SIZE), 10.0)
    expected[0, 0], expected[0, 1], expected[0, 2], expected[1, 1] = 20, 20, 10, 8
    np.testing.assert_array_equal(loaded.height, expected)
    assert (loaded.labels == 19).all()      # code 20 is the last of 1..20
    with pytest.raises(DatasetError, match='UH_NAD83_271460_3289689'):
        find_split(config, 'test')


# ------------------------------------------------------------------ DFC2019

def test_dfc2019_skips_images_without_both_truths(tmp_path):
    root = use(tmp_path, 'DFC2019_crp256')
    make_dfc2019(root, 'train', {0: 'AC', 1: 'A', 2: 'C', 3: 'AC'})
    make_dfc2019(root, 'valid', {5: 'AC'})
    samples = find_split(config, 'train')
    assert [s.name for s in samples] == ['JAX_004_006_RGB_0', 'JAX_004_006_RGB_3']
    assert samples[1].height == f'{root}/Train/Truth/JAX_004_006_AGL_3.tif'
    assert samples[1].labels == f'{root}/Train/Truth/JAX_004_006_CLS_3.tif'
    loaded = load_sample(config, samples[1])
    assert (loaded.height == 3).all() and (loaded.labels == 0).all()   # code 2 -> index 0
    assert not is_tile_dataset(config)
    config.train_valid_flag = False
    assert len(find_split(config, 'train')) == 3
    with pytest.raises(DatasetError, match='Test'):
        find_split(config, 'test')


def test_dfc2019_no_image_with_both_truths_is_an_error(tmp_path):
    root = use(tmp_path, 'DFC2019_crp256')
    make_dfc2019(root, 'valid', {0: 'A', 1: 'C'})
    with pytest.raises(DatasetError, match='both truths'):
        find_split(config, 'valid')


def test_dfc2019_codes_and_bin_codes(tmp_path):
    root = use(tmp_path, 'DFC2019_crp256')
    path = f'{root}/cls.tif'
    tif(path, np.array([[2, 5, 6, 9, 17, 65]], np.uint8))
    np.testing.assert_array_equal(read_labels(config, path), [[0, 1, 2, 3, 4, 5]])
    use(tmp_path, 'DFC2019_crp256_bin')
    assert config.label_codes == [0, 1]
    tif(path, np.array([[0, 1, 1, 0]], np.uint8))
    np.testing.assert_array_equal(read_labels(config, path), [[0, 1, 1, 0]])
    tif(path, np.array([[0, 1, 65, 0]], np.uint8))
    with pytest.raises(DatasetError, match=r'cls\.tif.*\[65\]'):
        read_labels(config, path)


# ------------------------------------------------------------------ split folders

def test_dfc2023_pairs_by_name_and_stacks_sar(tmp_path):
    root = use(tmp_path, 'DFC2023_track2', 'sar_mode=True')
    # Created in an order unlike the sorted one: pairing must follow names.
    names = ['P0300', 'P0002', 'P0101']
    make_split_folders(root, 'train', names)
    for i, name in enumerate(names):
        tif(f'{root}/train/sar/{name}.tif', np.full((SIZE, SIZE), 1000 * (i + 1), np.uint16))
    samples = find_split(config, 'train')
    assert [s.name for s in samples] == sorted(names)
    for sample in samples:
        for path in (sample.height, sample.labels, sample.sar):
            assert os.path.basename(path) == sample.name + '.tif'
    loaded = load_sample(config, samples[2])       # P0300, made first (i = 0)
    assert loaded.image.shape == (SIZE, SIZE, 4)
    np.testing.assert_allclose(loaded.image[..., 3], 1000 / 65535, rtol=1e-6)
    assert (loaded.height == 0).all() and (loaded.labels == 0).all()
    os.remove(f'{root}/train/sar/P0101.tif')
    with pytest.raises(DatasetError, match=r'rgb/P0101\.tif.*sar'):
        find_split(config, 'train')


def test_vaihingen_crp256_uses_ndsm_folders(tmp_path):
    root = use(tmp_path, 'Vaihingen_crp256')
    make_split_folders(root, 'valid', ['a_0'], folders=('rgb', 'ndsm', 'sem'))
    sample = find_split(config, 'valid')[0]
    assert sample.height == f'{root}/valid/ndsm/a_0.tif'
    # Cropped Vaihingen that keeps the original names pairs top_mosaic with dsm_matching.
    tif(f'{root}/test/rgb/top_mosaic_09cm_area2_0.tif', rgb())
    tif(f'{root}/test/ndsm/dsm_09cm_matching_area2_0.tif', np.zeros((SIZE, SIZE), np.float32))
    tif(f'{root}/test/sem/top_mosaic_09cm_area2_0.tif', colour_labels(np.zeros((SIZE, SIZE), int)))
    assert find_split(config, 'test')[0].height.endswith('dsm_09cm_matching_area2_0.tif')
    config.sar_mode = True
    with pytest.raises(DatasetError, match='sar_mode'):
        find_split(config, 'valid')


def test_missing_split_folder_is_named(tmp_path):
    root = use(tmp_path, 'DFC2023')
    make_split_folders(root, 'train', ['x'])
    with pytest.raises(DatasetError,
                       match=r'(?s)Missing valid split folder: .*DFC2023/valid\n'
                             r'.*train/ valid/ test/'):
        find_split(config, 'valid')


def test_empty_split_is_an_error(tmp_path):
    root = use(tmp_path, 'DFC2023')
    for folder in ('rgb', 'dsm', 'sem'):
        os.makedirs(f'{root}/test/{folder}')
    with pytest.raises(DatasetError, match=r'test split has no images'):
        find_split(config, 'test')


def test_image_without_height_is_named(tmp_path):
    root = use(tmp_path, 'DFC2023')
    make_split_folders(root, 'train', ['a', 'b'])
    os.remove(f'{root}/train/dsm/b.tif')
    with pytest.raises(DatasetError, match=r'rgb/b\.tif: no height partner'):
        find_split(config, 'train')


def test_image_without_labels_is_named(tmp_path):
    root = use(tmp_path, 'DFC2023')
    make_split_folders(root, 'train', ['a', 'b'])
    os.remove(f'{root}/train/sem/a.tif')
    with pytest.raises(DatasetError, match=r'rgb/a\.tif: no labels partner'):
        find_split(config, 'train')


# ------------------------------------------------------------------ a new layout

def test_a_new_layout_is_one_row_and_its_finder(tmp_path, monkeypatch):
    def find_pairs(cfg, root, split):    # <split>/<name>.tif with its heights in <name>_h.tif
        files = layouts._index(os.path.join(root, split))
        return [Sample(name=stem, image=path, height=files[f'{stem}_h'], labels=None)
                for stem, path in files.items() if not stem.endswith('_h')]
    row = layouts.Layout('pairs', find_pairs, tiles=True,
                         tree=lambda cfg: '  train/ valid/ test/  each <name>.tif, '
                                          '<name>_h.tif')
    monkeypatch.setattr(layouts, 'LAYOUTS', layouts.LAYOUTS + (row,))
    monkeypatch.setitem(config.DATASETS, 'Pairs', dict(layout='pairs'))
    root = use(tmp_path, 'Pairs', 'sem_flag=False')
    tif(f'{root}/valid/b.tif', rgb())
    tif(f'{root}/valid/b_h.tif', np.zeros((SIZE, SIZE), np.float32))
    tif(f'{root}/valid/a.tif', rgb())
    tif(f'{root}/valid/a_h.tif', np.zeros((SIZE, SIZE), np.float32))
    assert config.layout == 'pairs'
    assert [(s.image, s.height) for s in find_split(config, 'valid')] == \
        [(f'{root}/valid/a.tif', f'{root}/valid/a_h.tif'),
         (f'{root}/valid/b.tif', f'{root}/valid/b_h.tif')]
    assert is_tile_dataset(config)
    use(tmp_path, 'Pairs_elsewhere')    # the entry by longest prefix; no folder
    with pytest.raises(DatasetError, match=r"(?s)layout 'pairs'.*Pairs_elsewhere/\n"
                                           r"  train/ valid/ test/  each <name>\.tif"):
        find_split(config, 'train')


# ------------------------------------------------------------------ check_split

def one_sample(tmp_path, image=None, height=None, labels=None):
    root = use(tmp_path, 'DFC2023')
    tif(f'{root}/train/rgb/s.tif', rgb() if image is None else image)
    tif(f'{root}/train/dsm/s.tif', np.ones((SIZE, SIZE), np.float32) if height is None else height)
    tif(f'{root}/train/sem/s.tif', np.zeros((SIZE, SIZE), np.uint8) if labels is None else labels)
    return find_split(config, 'train')


def test_good_sample_passes(tmp_path):
    check_split(config, one_sample(tmp_path))


def test_different_sizes_name_both_files(tmp_path):
    samples = one_sample(tmp_path, height=np.ones((SIZE, SIZE + 8), np.float32))
    with pytest.raises(DatasetError, match=r'rgb/s\.tif is 32x32.*dsm/s\.tif is 40x32'):
        check_split(config, samples)


def test_unreadable_file_is_named(tmp_path):
    samples = one_sample(tmp_path)
    with open(samples[0].labels, 'wb') as f:
        f.write(b'not an image at all')
    with pytest.raises(DatasetError, match=r'Cannot read .*sem/s\.tif'):
        check_split(config, samples)


def test_image_smaller_than_crop_is_named(tmp_path):
    samples = one_sample(tmp_path)
    config.cropSize = 64
    with pytest.raises(DatasetError, match=r'rgb/s\.tif is 32x32, smaller than cropSize=64.*32'):
        check_split(config, samples)


def test_labels_outside_codes_are_named(tmp_path):
    samples = one_sample(tmp_path, labels=np.full((SIZE, SIZE), 7, np.uint8))
    with pytest.raises(DatasetError, match=r'sem/s\.tif: label values \[7\]'):
        check_split(config, samples)


def test_check_split_counts_the_unlabelled_pixels(tmp_path):
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[3, :10] = 255
    samples = one_sample(tmp_path, labels=labels)
    settings.apply(['unlabelled_code=255'])
    count = check_split(config, samples)
    assert (count.pixels, count.unlabelled) == (SIZE * SIZE, 10)
    assert describe_unlabelled(config, count) == (
        "0.98% of the training label pixels (10 of 1,024) are unlabelled_code 255, "
        "left out of the semantic loss")
    config.sem_flag = False     # nothing to leave out of
    assert describe_unlabelled(config, count) is None


def test_all_nan_heights_are_named(tmp_path):
    samples = one_sample(tmp_path, height=np.full((SIZE, SIZE), -9999.0, np.float32))
    with pytest.raises(DatasetError, match=r'dsm/s\.tif: every height is nodata'):
        check_split(config, samples)


def test_empty_sample_list_is_an_error(tmp_path):
    use(tmp_path, 'DFC2023')
    with pytest.raises(DatasetError, match='no samples'):
        check_split(config, [])


# ------------------------------------------------------------------ value conventions

def test_nodata_becomes_nan(tmp_path):
    height = np.array([[1.5, -9999.0], [np.inf, -1001.0], [-1000.0, 7.0]], np.float32)
    path = f'{tmp_path}/h.tif'
    tif(path, height)
    got = read_height(path)
    np.testing.assert_array_equal(np.isnan(got), [[0, 1], [1, 1], [0, 0]])
    assert got[0, 0] == 1.5 and got[2, 0] == -1000 and got[2, 1] == 7
    # A GDAL_NODATA tag (42113) value is nodata too.
    tifffile.imwrite(path, np.array([[0.0, 3.0]], np.float32),
                     extratags=[(42113, 's', 0, '0', True)])
    got = read_height(path)
    assert np.isnan(got[0, 0]) and got[0, 1] == 3


def test_image_scaling_by_type(tmp_path):
    path = f'{tmp_path}/i.tif'
    tif(path, np.array([[[0, 32768, 65535]]], np.uint16))
    np.testing.assert_allclose(read_image(config, path), [[[0, 32768 / 65535, 1]]], rtol=1e-6)
    tif(path, np.array([[[10.0, 20.0, 30.0]]], np.float32))      # float: min-max
    np.testing.assert_allclose(read_image(config, path), [[[0, 0.5, 1]]])
    tif(path, np.array([[[0.1, 0.2, 0.3]]], np.float32))         # float in [0,1]: kept
    np.testing.assert_allclose(read_image(config, path), [[[0.1, 0.2, 0.3]]], rtol=1e-6)
    # OpenCV files come back RGB: a PNG pixel written as BGR (0, 0, 255) is red.
    cv2.imwrite(f'{tmp_path}/i.png', np.array([[[0, 0, 255]]], np.uint8))
    np.testing.assert_array_equal(read_image(config, f'{tmp_path}/i.png'), [[[1, 0, 0]]])


def test_lzw_tiff_is_read(tmp_path):
    # OpenCV writes LZW-compressed TIFFs, which tifffile cannot decode without
    # imagecodecs: the reader falls back to OpenCV (and converts BGR to RGB).
    path = f'{tmp_path}/lzw.tif'
    cv2.imwrite(path, np.array([[[0, 0, 255], [255, 0, 0]]], np.uint8))
    np.testing.assert_array_equal(read_image(config, path), [[[1, 0, 0], [0, 0, 1]]])


def test_sample_is_frozen():
    sample = Sample(name='a', image='a.tif', height='h.tif', labels=None)
    assert sample.dem is None and sample.sar is None
    with pytest.raises(Exception):
        sample.name = 'b'
