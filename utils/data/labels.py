"""Label files as class indices: the label codes of a dataset, their names, its
unlabelled value, and its building class.

Labels are int32 HxW indices into cfg.label_codes (RGB colour triplets for
Vaihingen, integer codes elsewhere); pixels holding cfg.unlabelled_code
(DFC2018's 0, the eroded Vaihingen reference's black) get the index
len(label_codes), which the semantic loss and metrics leave out.
"""
import numpy as np

from utils.errors import DatasetError
from utils.geo.read import read_raw, single_channel


def unlabelled_index(cfg):
    """The class index of cfg.unlabelled_code's pixels: len(label_codes).

    No class has it, and tf.one_hot makes an all-zero row of it, so these pixels
    add nothing to the cross-entropy (as in the published code, where a value
    matching no code gets an all-zero row); the confusion matrix skips it. It
    is non-negative, so the targets still pack into uint8 (utils/train/cache.py).
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
        values = single_channel(array, path, 'label image')
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


def building_classes(cfg):
    """The class indices (into label_codes) of the dataset's building class
    (cfg.building_codes, from the dataset table in config.py), [] without one."""
    codes = list(cfg.label_codes)
    return [codes.index(c) for c in cfg.building_codes or () if c in codes]


def describe_unlabelled(cfg, count):
    """For the training log: the share of the training label pixels left out
    of the semantic loss; None without semantics or an unlabelled value."""
    if not cfg.sem_flag or cfg.unlabelled_code is None or not count.pixels:
        return None
    return (f"{count.unlabelled / count.pixels:.2%} of the training label pixels "
            f"({count.unlabelled:,} of {count.pixels:,}) are unlabelled_code "
            f"{cfg.unlabelled_code!r}, left out of the semantic loss")


def class_names(cfg):
    """A name per label code, in their order: the dataset's (cfg.class_names,
    from the dataset table in config.py) where they name every code, else
    'building' for the building codes and 'class_<code>' for the others
    (label_codes set to codes of one's own)."""
    codes = list(cfg.label_codes)
    if cfg.class_names and len(cfg.class_names) == len(codes):
        return list(cfg.class_names)
    buildings = building_classes(cfg)
    return ['building' if i in buildings else
            'class_' + ('_'.join(map(str, c)) if isinstance(c, tuple) else str(c))
            for i, c in enumerate(codes)]
