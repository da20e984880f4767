"""Finding and loading the images, heights and labels of every dataset.

Every function takes the settings `cfg` (utils/settings.Settings, or the
config module itself) as its first argument; nothing here reads config.py.
The datasets root is os.path.join(cfg.shortcut_path, cfg.dataset_name);
cfg.layout (from the dataset table in config.py) names the row of LAYOUTS
below that says how it is organised:

  'vaihingen'      RGB/top_mosaic_09cm_area<N>.tif, NDSM/dsm_09cm_matching_area<N>.jpg,
                   SEM/top_mosaic_09cm_area<N>.tif; the split is a fixed list of areas.
  'dfc2018'        RGB/ DSM/ DEM/ SEM/ each <tile>.tif; the split is a fixed list of tiles.
  'dfc2019'        Train/ Valid/ Test/, each RGB/<base>_RGB_<n>.tif with
                   Truth/<base>_AGL_<n>.tif and Truth/<base>_CLS_<n>.tif; an RGB image
                   without BOTH truths is skipped (published rule).
  'split_folders'  train/ valid/ test/, each with one folder per modality holding files
                   of the same name: rgb/ sar/ dsm/ sem/, or the folders the dataset's
                   DATASETS entry in config.py names (Vaihingen_crp256 rgb/ ndsm/ sem/;
                   synthetic rgb/ dsm/ sem/).

A new layout is a row of LAYOUTS and its finder function.

Files are paired by name, never by directory order. A partner may be any
raster GDAL opens, whatever its extension (.tif .png .jpg .jp2 .vrt ...;
sidecars such as .aux.xml and .msk are not files of their own); for Vaihingen-style
names the height partner of top_mosaic_09cm_area<X> is dsm_09cm_matching_area<X>
(Vaihingen also accepts the ISPRS nDSM name dsm_09cm_matching_area<N>_normalized).

Loading conventions:
  image   float32 HxWx3 (HxWx4 with SAR) in [0, 1], read by utils/raster.Image:
          scaled by cfg.image_scale (default: uint8 / 255, uint16 / 65535 or
          the declared bit depth, floats within [0, 1] kept, other types min-max
          scaled per image); a palette expanded through its colour map. Channels
          after the third (alpha, NIR) are dropped. Pixels the file marks invalid
          (GDAL mask, alpha 0, nodata) get NaN heights. A multi-band SAR file is
          averaged into one channel, then scaled like a float image.
  height  float32 HxW metres (Vaihingen: the 8-bit nDSM value as stored). Nodata
          becomes NaN: non-finite values, the file's nodata value, its GDAL
          mask, and values below -1000 (e.g. -9999, -32768, -3.4e38). DFC2018
          instead applies its published outlier rule to DSM and DEM (see
          correct_dfc2018).
  labels  int32 HxW indices into cfg.label_codes (RGB colour triplets for
          Vaihingen, integer codes elsewhere); pixels holding cfg.unlabelled_code
          (DFC2018's 0, the eroded Vaihingen reference's black) get the index
          len(label_codes), which the semantic loss and metrics leave out.
Every file is read through utils/raster.py (GDAL).
"""
import dataclasses
import os
from typing import Callable, NamedTuple

import numpy as np

from utils import raster
from utils.errors import DatasetError
from utils.rules import CROP_MULTIPLE

SPLITS = ('train', 'valid', 'test')
NODATA_BELOW = -1000.0      # heights below this are nodata (DFC2018: outliers)
DFC2018_OUTLIER = 1000.0

VAIHINGEN_AREAS = {
    'train': (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 30, 34),
    'valid': (28, 32, 37),
    'test': (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38),
}
DFC2018_TILES = {
    'train': ('UH_NAD83_272056_3289689', 'UH_NAD83_272652_3289689', 'UH_NAD83_273248_3289689'),
    'valid': ('UH_NAD83_273844_3289689',),
    'test': ('UH_NAD83_271460_3289689', 'UH_NAD83_271460_3290290', 'UH_NAD83_272056_3290290',
             'UH_NAD83_272652_3290290', 'UH_NAD83_273248_3290290', 'UH_NAD83_273844_3290290',
             'UH_NAD83_274440_3289689', 'UH_NAD83_274440_3290290', 'UH_NAD83_275036_3289689',
             'UH_NAD83_275036_3290290'),
}
DFC2019_SPLIT_DIRS = {'train': 'Train', 'valid': 'Valid', 'test': 'Test'}
MAX_LISTED = 5              # problems listed in one error message


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image and the files that go with it."""
    name: str                   # e.g. 'top_mosaic_09cm_area1' or the image's file stem
    image: str                  # path of the RGB/IRRG image
    height: str                 # path of the nDSM / AGL / dsm (DFC2018: the DSM)
    labels: str | None          # path of the semantic label image
    dem: str | None = None      # DFC2018 only
    sar: str | None = None      # DFC2023 with sar_mode


class Loaded(NamedTuple):
    image: np.ndarray           # float32 HxWxC in [0, 1]
    height: np.ndarray          # float32 HxW, NaN where nodata
    labels: np.ndarray | None   # int32 HxW class indices


def image_channels(cfg):
    """Channels of a loaded image: RGB, and the SAR channel with sar_mode."""
    return 4 if cfg.sar_mode else 3


def check_crop_fits(what, shape, crop):
    """DatasetError unless every side of `shape` ((rows, cols) of an image, or
    one side) holds the crop: training samples and the window layout need it
    (inference reflection-pads a smaller image to the crop before laying
    windows out)."""
    if min(shape[:2]) < crop:
        size = 'x'.join(str(side) for side in reversed(shape[:2]))   # width x height
        step = CROP_MULTIPLE
        fitting = min(shape[:2]) // step * step
        raise DatasetError(f"{what} is {size}, smaller than cropSize={crop}. Fix: set "
                           f"cropSize to at most {fitting} (a multiple of {step}), or remove "
                           f"the image.")


def dataset_root(cfg):
    return os.path.join(cfg.shortcut_path, cfg.dataset_name)


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way a dataset folder is organised: a row of LAYOUTS."""
    name: str                           # the layout setting's value
    find: Callable[..., list]           # (cfg, root, split) -> its Samples
    tree: Callable[..., str]            # (cfg) -> the folder tree under the root, for errors
    tiles: bool = False                 # large tiles, trained on random crops
    folders: dict | None = None         # {modality: folder} in each split, unless the
                                        # dataset's DATASETS entry names its own


def layout_named(name):
    """The row of LAYOUTS named `name`, or None."""
    return next((row for row in LAYOUTS if row.name == name), None)


def layout(cfg):
    """The row of LAYOUTS that cfg.layout names."""
    row = layout_named(cfg.layout)
    if row is None:
        raise DatasetError(f"Unknown layout {cfg.layout!r} for dataset {cfg.dataset_name!r}; "
                           f"expected one of {', '.join(row.name for row in LAYOUTS)}.")
    return row


def is_tile_dataset(cfg):
    """True for the large-tile datasets that are trained on random crops."""
    return layout(cfg).tiles


def split_folder_names(cfg):
    """{modality: folder} in each split of the dataset."""
    return cfg.folders or layout(cfg).folders


def expected_layout(cfg):
    """The folder tree the dataset should have, for error messages."""
    return f"{dataset_root(cfg)}/\n{layout(cfg).tree(cfg)}"


def _layout_error(cfg, what):
    return DatasetError(f"{what}\nExpected layout for dataset_name={cfg.dataset_name!r} "
                        f"(layout {cfg.layout!r}):\n{expected_layout(cfg)}\n"
                        f"Fix: put the data there, or set shortcut_path (now "
                        f"{cfg.shortcut_path!r}) / dataset_name to where it is.")


def _require_dir(cfg, path, what):
    if not os.path.isdir(path):
        raise _layout_error(cfg, f"Missing {what} folder: {path}")


def _index(folder):
    """{file stem: path} of the image files in `folder` (empty if it is missing)."""
    if not os.path.isdir(folder):
        return {}
    index = {}
    for entry in sorted(os.listdir(folder)):
        stem = os.path.splitext(entry)[0]
        path = os.path.join(folder, entry)
        if not os.path.isfile(path) or not raster.is_image_file(path):
            continue
        if stem in index:
            raise DatasetError(f"Two files with the name {stem!r}: {index[stem]} and {path}. "
                               f"Fix: remove or rename one of them.")
        index[stem] = path
    return index


def _raise_problems(cfg, problems, fix):
    if problems:
        listed = '\n  '.join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" \
            if len(problems) > MAX_LISTED else ''
        raise DatasetError(f"{len(problems)} problem(s) in dataset "
                           f"{cfg.dataset_name!r}:\n  {listed}{more}\nFix: {fix}")


def _labels_needed(cfg, folder, what):
    """Whether the label folder is used: required with sem_flag, optional without."""
    if os.path.isdir(folder):
        return True
    if cfg.sem_flag:
        raise _layout_error(cfg, f"Missing {what} folder: {folder} (needed because sem_flag=True; "
                            f"set sem_flag=False to train without semantics)")
    return False


def _find_named(cfg, root, split, stems, folders):
    """Samples of the fixed-name layouts (Vaihingen, DFC2018).

    stems: [(name, {modality: file stem or tuple of accepted stems})];
    folders: {modality: folder name}.
    """
    for modality, folder in folders.items():
        if modality != 'labels':
            _require_dir(cfg, os.path.join(root, folder), folder)
    use_labels = _labels_needed(cfg, os.path.join(root, folders['labels']), folders['labels'])
    index = {m: _index(os.path.join(root, f)) for m, f in folders.items()}
    samples, problems = [], []
    for name, stem in stems:
        paths = {}
        for modality in folders:
            if modality == 'labels' and not use_labels:
                paths[modality] = None
                continue
            candidates = stem[modality] if isinstance(stem[modality], tuple) else (stem[modality],)
            paths[modality] = next((index[modality][c] for c in candidates
                                    if c in index[modality]), None)
            if paths[modality] is None:
                expected = os.path.join(root, folders[modality], candidates[0])
                problems.append(f"{split}: missing {expected}.* ({modality} of {name})")
        samples.append(Sample(name=name, image=paths['image'], height=paths['height'],
                              labels=paths['labels'], dem=paths.get('dem')))
    _raise_problems(cfg, problems, "the published split lists these files by name; add them "
                              "(see the expected layout in utils/datasets.py).")
    return samples


def _find_vaihingen(cfg, root, split):
    stems = [(f'top_mosaic_09cm_area{n}',
              # The ISPRS nDSM package adds '_normalized' to the name in README's Datasets table.
              dict(image=f'top_mosaic_09cm_area{n}',
                   height=(f'dsm_09cm_matching_area{n}', f'dsm_09cm_matching_area{n}_normalized'),
                   labels=f'top_mosaic_09cm_area{n}'))
             for n in VAIHINGEN_AREAS[split]]
    return _find_named(cfg, root, split, stems, dict(image='RGB', height='NDSM', labels='SEM'))


def _find_dfc2018(cfg, root, split):
    stems = [(t, dict(image=t, height=t, dem=t, labels=t)) for t in DFC2018_TILES[split]]
    return _find_named(cfg, root, split, stems,
                       dict(image='RGB', height='DSM', dem='DEM', labels='SEM'))


def _find_dfc2019(cfg, root, split):
    split_dir = os.path.join(root, DFC2019_SPLIT_DIRS[split])
    _require_dir(cfg, split_dir, f"{DFC2019_SPLIT_DIRS[split]} split")
    for sub in ('RGB', 'Truth'):
        _require_dir(cfg, os.path.join(split_dir, sub), f"{DFC2019_SPLIT_DIRS[split]}/{sub}")
    truth = _index(os.path.join(split_dir, 'Truth'))
    samples, problems = [], []
    for stem, path in _index(os.path.join(split_dir, 'RGB')).items():
        base, marker, suffix = stem.rpartition('_RGB')
        if not marker:
            problems.append(f"{path}: name does not follow <base>_RGB_<n>")
            continue
        agl, cls = truth.get(f'{base}_AGL{suffix}'), truth.get(f'{base}_CLS{suffix}')
        if agl and cls:     # published rule: an image without both truths is skipped
            samples.append(Sample(name=stem, image=path, height=agl, labels=cls))
    _raise_problems(cfg, problems, "rename the images to <base>_RGB_<n>.tif or move them out of RGB/.")
    if not samples:
        raise _layout_error(cfg, f"No image in {split_dir}/RGB has both truths "
                            f"(Truth/<base>_AGL_<n> and Truth/<base>_CLS_<n>).")
    return samples


def _find_split_folders(cfg, root, split):
    names = split_folder_names(cfg)
    split_dir = os.path.join(root, split)
    _require_dir(cfg, split_dir, f"{split} split")
    for modality in ('image', 'height'):
        _require_dir(cfg, os.path.join(split_dir, names[modality]), f"{split}/{names[modality]}")
    if cfg.sar_mode:
        if not names['sar']:
            raise DatasetError(f"sar_mode=True but dataset {cfg.dataset_name!r} has no SAR "
                               f"images. Fix: set sar_mode=False.")
        _require_dir(cfg, os.path.join(split_dir, names['sar']), f"{split}/{names['sar']}")
    use_labels = _labels_needed(cfg, os.path.join(split_dir, names['labels']),
                                f"{split}/{names['labels']}")
    index = {m: _index(os.path.join(split_dir, names[m]))
             for m in ('image', 'height', 'labels', 'sar') if names[m]}
    partners = ['height'] + (['labels'] if use_labels else []) + \
        (['sar'] if cfg.sar_mode else [])
    samples, problems = [], []
    for stem, path in index['image'].items():
        found = {}
        for modality in partners:
            candidates = [stem]
            if modality == 'height':    # cropped Vaihingen keeps the original file names
                candidates.append(stem.replace('top_mosaic_09cm_area', 'dsm_09cm_matching_area'))
            found[modality] = next((index[modality][c] for c in candidates
                                    if c in index[modality]), None)
            if found[modality] is None:
                problems.append(f"{path}: no {modality} partner "
                                f"{os.path.join(split_dir, names[modality], stem)}.*")
        samples.append(Sample(name=stem, image=path, height=found['height'],
                              labels=found.get('labels'), sar=found.get('sar')))
    _raise_problems(cfg, problems, "add the partner file with the same name, or remove the image.")
    if not samples:
        raise _layout_error(cfg, f"The {split} split has no images in "
                            f"{os.path.join(split_dir, names['image'])}.")
    return samples


def _split_folders_tree(cfg):
    names = split_folder_names(cfg)
    lines = [f"    {names[m]}/<name>.tif" for m in ('image', 'sar', 'height', 'labels')
             if names[m] and (m != 'sar' or cfg.sar_mode)]
    return "  train/ valid/ test/  each with\n" + '\n'.join(lines) + \
        "\n  (the same file name in every folder)"


def _split_lists(lists, prefix=''):
    return '\n'.join(f"    {s}: {prefix}{' '.join(map(str, names))}"
                     for s, names in lists.items())


LAYOUTS = (
    Layout('vaihingen', _find_vaihingen, tiles=True,
           tree=lambda cfg: "  RGB/top_mosaic_09cm_area<N>.tif\n"
                        "  NDSM/dsm_09cm_matching_area<N>.jpg\n  SEM/top_mosaic_09cm_area<N>.tif\n"
                        + _split_lists(VAIHINGEN_AREAS, 'areas ')),
    Layout('dfc2018', _find_dfc2018, tiles=True,
           tree=lambda cfg: "  RGB/<tile>.tif\n  DSM/<tile>.tif\n  DEM/<tile>.tif\n  SEM/<tile>.tif\n"
                        + _split_lists(DFC2018_TILES)),
    Layout('dfc2019', _find_dfc2019,
           tree=lambda cfg: "  Train/ Valid/ Test/  each with\n    RGB/<base>_RGB_<n>.tif\n"
                        "    Truth/<base>_AGL_<n>.tif\n    Truth/<base>_CLS_<n>.tif"),
    Layout('split_folders', _find_split_folders, tree=_split_folders_tree,
           folders=dict(image='rgb', height='dsm', labels='sem', sar='sar')),
)


def find_split(cfg, split):
    """The samples of 'train', 'valid' or 'test', sorted by name.

    With cfg.train_valid_flag False, 'train' also returns the valid samples.
    For dataset_name 'synthetic' the data are generated on first use.
    """
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    root = dataset_root(cfg)
    if cfg.dataset_name == 'synthetic':
        from utils import synthetic
        synthetic.ensure_synthetic(root, cfg.seed)
    if not os.path.isdir(root):
        raise _layout_error(cfg, f"Dataset folder not found: {root}")
    find = layout(cfg).find
    parts = [split] + (['valid'] if split == 'train' and not cfg.train_valid_flag else [])
    samples = []
    for part in parts:
        samples += find(cfg, root, part)
    return samples


# ------------------------------------------------------------------ reading

def read_raw(path):
    """(array channels-last, nodata value or None) of a raster file."""
    return raster.read_raw(path)


def _single_channel(array, path, what):
    """HxW from HxW, HxWx1, or HxWxC with identical channels (grey saved as colour)."""
    if array.ndim == 3 and (array.shape[2] == 1 or
                            all(np.array_equal(array[..., 0], array[..., c])
                                for c in range(1, array.shape[2]))):
        array = array[..., 0]
    if array.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel {what}, got shape "
                           f"{array.shape}. Fix: export it as one band.")
    return array


def sar_to_unit(array):
    """The SAR channel (read_sar: its bands averaged) scaled to float32 [0, 1]
    as image files are with image_scale = 'minmax' for floats outside [0, 1]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.float32)
    low, high = values[finite].min(), values[finite].max()
    if not (np.issubdtype(array.dtype, np.floating) and low >= 0 and high <= 1):
        values = (values - low) / (high - low) if high > low else values - low
    return np.where(finite, values, 0).astype(np.float32)


def load_image(cfg, path):
    """(float32 HxWx3 in [0, 1] scaled by cfg.image_scale, bool HxW valid):
    the first three bands (a palette expanded), and where the file's mask,
    alpha, nodata value and finite values say the pixels are valid."""
    with raster.Image(path, None, 3, cfg.image_scale) as image:
        return image.read()


def read_image(cfg, path):
    """float32 HxWx3 in [0, 1] (invalid pixels 0)."""
    return load_image(cfg, path)[0]


def read_sar(path):
    """float32 HxW in [0, 1]; several bands are averaged."""
    array, _ = read_raw(path)
    if array.ndim == 3:
        array = array.astype(np.float64).mean(axis=-1) if array.shape[2] > 1 else array[..., 0]
    return sar_to_unit(array)


def read_height(path, nodata_to_nan=True):
    """float32 HxW heights; nodata -> NaN unless `nodata_to_nan` is False
    (NaN where the file's GDAL mask is 0 either way)."""
    array, nodata, mask = raster.read_raw(path, mask=True)
    height = _single_channel(array, path, 'height map').astype(np.float32)
    if nodata_to_nan:
        bad = ~np.isfinite(height) | (height < NODATA_BELOW)
        if nodata is not None:
            bad |= height == np.float32(nodata)
        height[bad] = np.nan
    if mask is not None:
        height[~mask] = np.nan
    return height


def correct_dfc2018(raster):
    """The published DFC2018 outlier rule, applied to one DSM or DEM raster.

    Values > 1000 become the raster's max and values < -1000 its min, where
    max and min are taken over the remaining (in-range, non-NaN) values: the
    max over all values would be the outlier itself. NaN stays NaN; a raster
    with no in-range value becomes all NaN.
    """
    raster = np.asarray(raster, dtype=np.float64)
    in_range = (raster >= -DFC2018_OUTLIER) & (raster <= DFC2018_OUTLIER)
    if not in_range.any():
        return np.full(raster.shape, np.nan, np.float32)
    fixed = raster.copy()
    fixed[raster > DFC2018_OUTLIER] = raster[in_range].max()
    fixed[raster < -DFC2018_OUTLIER] = raster[in_range].min()
    return fixed.astype(np.float32)


def unlabelled_index(cfg):
    """The class index of cfg.unlabelled_code's pixels: len(label_codes).

    No class has it, and tf.one_hot makes an all-zero row of it, so these pixels
    add nothing to the cross-entropy (as in the published code, where a value
    matching no code gets an all-zero row); the confusion matrix skips it. It
    is non-negative, so the targets still pack into uint8 (utils/pipeline.py).
    """
    return len(cfg.label_codes)


def read_labels(cfg, path):
    """int32 HxW indices into cfg.label_codes, unlabelled_index() where the
    file holds cfg.unlabelled_code; other values raise."""
    array, _ = read_raw(path)
    codes = cfg.label_codes
    unlabelled = cfg.unlabelled_code
    if isinstance(codes[0], tuple):     # colour triplets (Vaihingen)
        if array.ndim != 3 or array.shape[2] < 3:
            raise DatasetError(f"{path}: label_codes are RGB colours but the label image has "
                               f"shape {array.shape}. Fix: use the colour label images, or set "
                               f"label_codes to the integer codes of this file.")
        rgb = array[..., :3].astype(np.int64)
        values = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        code_values = np.array([(r << 16) | (g << 8) | b for r, g, b in codes], np.int64)
        if unlabelled is not None:
            r, g, b = unlabelled
            unlabelled = (r << 16) | (g << 8) | b
    else:
        values = _single_channel(array, path, 'label image')
        if not np.array_equal(values, np.round(values)):
            raise DatasetError(f"{path}: label values are not integers. Fix: save the class "
                               f"codes {list(codes)} as integers.")
        values = values.astype(np.int64)
        code_values = np.array(codes, np.int64)
    order = np.argsort(code_values)
    position = np.clip(np.searchsorted(code_values[order], values), 0, len(codes) - 1)
    known = code_values[order][position] == values
    is_unlabelled = values == unlabelled if unlabelled is not None else None
    if is_unlabelled is not None:
        known |= is_unlabelled
    if not known.all():
        unknown = np.unique(values[~known])
        if isinstance(codes[0], tuple):
            shown = [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in unknown[:10].tolist()]
        else:
            shown = unknown[:10].tolist()
        raise DatasetError(f"{path}: label values {shown} are not in label_codes "
                           f"{list(codes)} ({int((~known).sum())} pixels). Fix: correct the "
                           f"labels, set label_codes for this dataset, or set "
                           f"unlabelled_code (now {cfg.unlabelled_code!r}) to the value "
                           f"of unlabelled pixels.")
    indices = order[position].astype(np.int32)
    if is_unlabelled is not None:
        indices[is_unlabelled] = unlabelled_index(cfg)
    return indices


def load_sample(cfg, sample):
    """Decode one sample: Loaded(image, height, labels). Pixels the image
    marks invalid (mask, alpha, nodata) get NaN heights and the unlabelled
    class index, so every loss and metric leaves them out."""
    image, valid = load_image(cfg, sample.image)
    sizes = {sample.image: image.shape[:2]}
    if sample.sar:
        sar = read_sar(sample.sar)
        sizes[sample.sar] = sar.shape
        _check_sizes(sizes)
        image = np.concatenate([image, sar[..., None]], axis=-1)
    if sample.dem:      # DFC2018: height = DSM - DEM after the outlier rule on each
        dsm = read_height(sample.height, nodata_to_nan=False)
        dem = read_height(sample.dem, nodata_to_nan=False)
        _check_sizes({sample.height: dsm.shape, sample.dem: dem.shape})
        height = correct_dfc2018(dsm) - correct_dfc2018(dem)
    else:
        height = read_height(sample.height)
    sizes[sample.height] = height.shape
    labels = None
    if sample.labels:
        labels = read_labels(cfg, sample.labels)
        sizes[sample.labels] = labels.shape
    _check_sizes(sizes)
    if not valid.all():
        height = np.where(valid, height, np.float32(np.nan))
        if labels is not None:
            labels = np.where(valid, labels, np.int32(unlabelled_index(cfg)))
    return Loaded(image, height, labels)


def _check_sizes(sizes):
    if len({tuple(s) for s in sizes.values()}) > 1:
        listed = ', '.join(f"{p} is {s[1]}x{s[0]}" for p, s in sizes.items())
        raise DatasetError(f"Files of one sample differ in size: {listed} (width x height). "
                           f"Fix: resample them to the same grid.")


class SplitSummary(NamedTuple):
    pixels: int         # label pixels of a split
    unlabelled: int     # of them, those holding unlabelled_code
    band_mean: list     # per image band, over the valid pixels, in [0, 1] units
    band_spread: list

    def imagery(self):
        """The band statistics recorded beside the best weights."""
        return dict(band_mean=self.band_mean, band_spread=self.band_spread)


def check_training_splits(cfg):
    """check_split on every split training reads: train, and valid unless it
    is merged into train (train_valid_flag = False). Returns the SplitSummary
    of the split training learns from (its band statistics go beside the
    best weights: Task.imagery)."""
    summaries = {split: check_split(cfg, find_split(cfg, split))
                 for split in (('train', 'valid') if cfg.train_valid_flag else ('train',))}
    return summaries['train']


def describe_unlabelled(cfg, count):
    """For the training log: the share of the training label pixels left out
    of the semantic loss; None without semantics or an unlabelled value."""
    if not cfg.sem_flag or cfg.unlabelled_code is None or not count.pixels:
        return None
    return (f"{count.unlabelled / count.pixels:.2%} of the training label pixels "
            f"({count.unlabelled:,} of {count.pixels:,}) are unlabelled_code "
            f"{cfg.unlabelled_code!r}, left out of the semantic loss")


def check_split(cfg, samples, verbose=0):
    """Load every sample and raise DatasetError on anything training would trip over.

    Besides what load_sample checks (readable files, sizes, label values):
    every image at least cfg.cropSize on both sides, and not all heights nodata.
    Returns its SplitSummary.
    """
    if not samples:
        raise _layout_error(cfg, "The split has no samples.")
    progress = None
    if verbose:
        import keras
        progress = keras.utils.Progbar(len(samples), unit_name='file')
    crop = cfg.cropSize
    pixels = unlabelled = count = 0
    total = squares = 0.0
    for i, sample in enumerate(samples):
        loaded = load_sample(cfg, sample)
        check_crop_fits(sample.image, loaded.height.shape, crop)
        if loaded.labels is not None:
            pixels += loaded.labels.size
            unlabelled += int(np.count_nonzero(loaded.labels == unlabelled_index(cfg)))
        valid = np.isfinite(loaded.height)
        if not valid.any():
            files = sample.height + (f" and {sample.dem}" if sample.dem else '')
            raise DatasetError(f"{files}: every height is nodata (NaN, GDAL nodata or "
                               f"< {NODATA_BELOW:g}). Fix: replace the file or remove the sample.")
        values = loaded.image[valid].astype(np.float64)
        count, total, squares = count + len(values), total + values.sum(0), \
            squares + np.square(values).sum(0)
        if progress:
            progress.update(i + 1)
    mean = total / count
    return SplitSummary(pixels, unlabelled, mean.tolist(),
                        np.sqrt(np.maximum(squares / count - mean ** 2, 0)).tolist())
