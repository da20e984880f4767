"""Where the files of every dataset are: its layout, and the samples of a split.

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
Every function takes the settings `cfg` (utils/settings.Settings) first.
"""
import dataclasses
import os
from typing import Callable

from utils.errors import DatasetError
from utils.geo.files import is_image_file

SPLITS = ('train', 'valid', 'test')
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


def layout_error(cfg, what):
    return DatasetError(f"{what}\nExpected layout for dataset_name={cfg.dataset_name!r} "
                        f"(layout {cfg.layout!r}):\n{expected_layout(cfg)}\n"
                        f"Fix: put the data there, or set shortcut_path (now "
                        f"{cfg.shortcut_path!r}) / dataset_name to where it is.")


def _require_dir(cfg, path, what):
    if not os.path.isdir(path):
        raise layout_error(cfg, f"Missing {what} folder: {path}")


def _index(folder):
    """{file stem: path} of the image files in `folder` (empty if it is missing)."""
    if not os.path.isdir(folder):
        return {}
    index = {}
    for entry in sorted(os.listdir(folder)):
        stem = os.path.splitext(entry)[0]
        path = os.path.join(folder, entry)
        if not os.path.isfile(path) or not is_image_file(path):
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
        raise layout_error(cfg, f"Missing {what} folder: {folder} (needed because sem_flag=True; "
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
                              "(see the expected layout in utils/data/layouts.py).")
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
        raise layout_error(cfg, f"No image in {split_dir}/RGB has both truths "
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
        raise layout_error(cfg, f"The {split} split has no images in "
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
        from utils.data import synthetic
        synthetic.ensure_synthetic(root, cfg.seed)
    if not os.path.isdir(root):
        raise layout_error(cfg, f"Dataset folder not found: {root}")
    find = layout(cfg).find
    parts = [split] + (['valid'] if split == 'train' and not cfg.train_valid_flag else [])
    samples = []
    for part in parts:
        samples += find(cfg, root, part)
    return samples
