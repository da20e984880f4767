"""The MTL's heads, described once.

One row per head says how it is trained (output name, channels, final
activation; the training target, a field of the batch with the head's
name, computed by the head's target function from a loaded sample; its loss
term: name, loss, weight setting; the setting that switches it on), how its
target turns when augmentation flips or transposes a crop (and a prediction
when test-time flips are turned back), whether predict.py writes it, and
whether evaluation scores it. The network outputs, the DAE's input, the
pipeline's fields, the loss terms and their order, the checkpoint's
architecture keys, the benchmark's batches, tiled inference, predict.py's
outputs and the evaluation all follow this table, in its order. Adding a
head is a row here, its target (and turn) function, and its flag and weight
in config.py.

The first head is the height, the DSM the networks exist for: it is always
on, in 'dsm' head mode the other heads feed it, and the DAE refines it.

Functions taking `cfg` read settings from it by config.py's names (the
config module itself, or any object with those attributes).
"""
import dataclasses
from typing import Callable

import numpy as np

from utils.data import targets
from utils.errors import DatasetError

CLASSES = 'classes'     # channels: one per label code
# Head.output: what predict.py does with a head's maps
DEFAULT = 'default'     # written unless --outputs leaves it out
OPTIONAL = 'optional'   # written when --outputs names it


@dataclasses.dataclass(frozen=True)
class Head:
    name: str               # MTL output, the batch field holding its target, and the
                            # suffix of predict.py's file (<image>_<name>.tif)
    channels: int | str     # output channels, or CLASSES
    activation: str | None  # of the output convolution
    loss: str               # 'regression' (config.reg_loss over the valid heights) or
                            # 'cross_entropy' (target: class indices, one channel)
    term: str               # name of the loss term in logs and reports
    weight: str             # config setting weighing the term in the MTL loss
    flag: str | None        # config setting switching the head on; None: always on
    on_by_default: bool     # on when a network is built without naming the head
    target: Callable        # (data.samples.Loaded, cfg) -> [H, W, ch] array over the whole sample
    depends_on: tuple = ()  # settings the target is computed with, besides the data
    # (value, transpose, flip_rows, flip_cols, cfg) -> value: the target's (or a
    # prediction's) values once its pixels were transposed, then flipped, as the
    # flags (booleans or boolean tensors) say; for values that have a direction.
    # None: the values stay as they are.
    turn: Callable | None = None
    output: str | None = None   # DEFAULT, OPTIONAL, or None: predict.py never writes it
    scored: bool = False        # evaluation scores it against its target

    @property
    def is_classes(self):
        """Predicts class probabilities, blended as such; its answer is their argmax."""
        return self.loss == 'cross_entropy'

    @property
    def dtype(self):
        """Type of the target field: class indices or values."""
        return 'int32' if self.is_classes else 'float32'

    @property
    def field_channels(self):
        """Channels of the target field as the pipeline stores it."""
        return 1 if self.is_classes else self.channels

    def out_channels(self, num_classes):
        return num_classes if self.channels == CLASSES else self.channels

    def answer(self, maps):
        """The head's prediction from its blended maps: class indices (the most
        probable class) for a class head, the maps themselves otherwise."""
        return np.argmax(maps, -1) if self.is_classes else maps


def _height(loaded, cfg):
    return np.where(np.isfinite(loaded.height), loaded.height, 0)[..., None]


def _classes(loaded, cfg):
    if loaded.labels is None:
        raise DatasetError("no semantic labels for this sample, but sem_flag = True; "
                           "add its label file or set sem_flag = False")
    return np.asarray(loaded.labels, np.int32)[..., None]


def _normals(loaded, cfg):
    return targets.surface_normals(loaded.height, cfg.normalize_flag)


def _turn_normals(value, transpose, flip_rows, flip_cols, cfg):
    """Normals are (-zx, -zy, 1)/|.| with x along columns and y along rows,
    stored as e = s (n + 1) / 2 (targets.normal_scale), so negating a
    component is e -> s - e: a transpose swaps x and y, a row flip negates
    y, a column flip x."""
    import tensorflow as tf     # not for predict.py's arguments, read before --set applies
    scale = targets.normal_scale(cfg.normalize_flag)
    nx, ny, nz = tf.unstack(value, axis=-1)
    nx, ny = tf.where(transpose, ny, nx), tf.where(transpose, nx, ny)
    ny = tf.where(flip_rows, scale - ny, ny)
    nx = tf.where(flip_cols, scale - nx, nx)
    return tf.stack([nx, ny, nz], axis=-1)


def _edges(loaded, cfg):
    return targets.edge_map(loaded.height, cfg.roof_height_threshold, cfg.canny_lt,
                             cfg.canny_ht)[..., None]


HEADS = (
    Head('height', 1, None, 'regression', 'dsm', 'w1', None, True, _height,
         output=DEFAULT),
    Head('sem', CLASSES, 'softmax', 'cross_entropy', 'sem', 'w2', 'sem_flag', True, _classes,
         output=DEFAULT, scored=True),
    Head('norm', 3, None, 'regression', 'norm', 'w3', 'norm_flag', True, _normals,
         ('normalize_flag',), turn=_turn_normals, output=OPTIONAL),
    Head('edge', 1, 'relu', 'regression', 'edge', 'w4', 'edge_flag', False, _edges,
         ('roof_height_threshold', 'canny_lt', 'canny_ht')),
)
HEIGHT = HEADS[0]
NAMES = tuple(h.name for h in HEADS)
TERMS = tuple(h.term for h in HEADS)
FLAGS = tuple(h.flag for h in HEADS if h.flag)


def by_name(name):
    """The row of head `name` (None for names no head has, e.g. 'height_mtl')."""
    return next((h for h in HEADS if h.name == name), None)


def select(**switches):
    """The heads switched on, in table order. `switches` names heads by their
    output name (sem=False); a head not named is on by its default."""
    unknown = set(switches) - {h.name for h in HEADS if h.flag}
    if unknown:
        raise TypeError(f"no head to switch named {sorted(unknown)}: the switchable "
                        f"heads are {[h.name for h in HEADS if h.flag]}")
    return [h for h in HEADS if h.flag is None or switches.get(h.name, h.on_by_default)]


def switches(cfg):
    """The head switches of cfg, as select() takes them."""
    return {h.name: bool(getattr(cfg, h.flag)) for h in HEADS if h.flag}


def from_config(cfg):
    """The heads cfg switches on."""
    return select(**switches(cfg))
