"""The MTL's heads, described once.

One row per head: what the MTL predicts (output name, channels, final
activation), the training target the input pipeline makes for it (a field of
the batch with the head's name, computed by the head's target function from
a loaded sample), its loss term (name, loss, weight setting) and the setting
that switches it on. The network outputs, the DAE's input, the pipeline's
fields, the loss terms and their order, the checkpoint's architecture keys
and the benchmark's batches all follow this table, in its order. Adding a
head is a row here, its target function, and its flag and weight in
config.py.

The first head is the height, the DSM the networks exist for: it is always
on, in 'dsm' head mode the other heads feed it, and the DAE refines it.
"""
import dataclasses
from typing import Callable

import numpy as np

from utils import geometry
from utils.errors import DatasetError

CLASSES = 'classes'     # channels: one per label code


@dataclasses.dataclass(frozen=True)
class Head:
    name: str               # MTL output, and the batch field holding its target
    channels: int | str     # output channels, or CLASSES
    activation: str | None  # of the output convolution
    loss: str               # 'regression' (config.reg_loss over the valid heights) or
                            # 'cross_entropy' (target: class indices, one channel)
    term: str               # name of the loss term in logs and reports
    weight: str             # config setting weighing the term in the MTL loss
    flag: str | None        # config setting switching the head on; None: always on
    default: bool           # on when a network is built without naming the head
    target: Callable        # (datasets.Loaded, cfg) -> [H, W, ch] array over the whole sample
    depends_on: tuple = ()  # settings the target is computed with, besides the data
    turn: Callable | None = None    # (value, transpose, flip_rows, flip_cols, cfg) -> value:
                            # how a direction-dependent target's values change when
                            # the crop is transposed or flipped; None: they do not

    @property
    def dtype(self):
        """Type of the target field: class indices or values."""
        return 'int32' if self.loss == 'cross_entropy' else 'float32'

    @property
    def field_channels(self):
        """Channels of the target field as the pipeline stores it."""
        return 1 if self.loss == 'cross_entropy' else self.channels

    def out_channels(self, num_classes):
        return num_classes if self.channels == CLASSES else self.channels


def _height(loaded, cfg):
    return np.where(np.isfinite(loaded.height), loaded.height, 0)[..., None]


def _classes(loaded, cfg):
    if loaded.labels is None:
        raise DatasetError("no semantic labels for this sample, but sem_flag = True; "
                           "add its label file or set sem_flag = False")
    return np.asarray(loaded.labels, np.int32)[..., None]


def _normals(loaded, cfg):
    return geometry.surface_normals(loaded.height, cfg.normalize_flag)


def _turn_normals(value, transpose, flip_rows, flip_cols, cfg):
    """Normals are (-zx, -zy, 1)/|.| with x along columns and y along rows,
    stored as e = s (n + 1) / 2 (s = 1, or 255 without normalize_flag), so
    negating a component is e -> s - e; a transpose swaps x and y."""
    import tensorflow as tf
    scale = 1.0 if cfg.normalize_flag else 255.0
    nx, ny, nz = tf.unstack(value, axis=-1)
    nx, ny = tf.where(transpose, ny, nx), tf.where(transpose, nx, ny)
    ny = tf.where(flip_rows, scale - ny, ny)
    nx = tf.where(flip_cols, scale - nx, nx)
    return tf.stack([nx, ny, nz], axis=-1)


def _edges(loaded, cfg):
    return geometry.edge_map(loaded.height, cfg.roof_height_threshold, cfg.canny_lt,
                             cfg.canny_ht)[..., None]


HEADS = (
    Head('height', 1, None, 'regression', 'dsm', 'w1', None, True, _height),
    Head('sem', CLASSES, 'softmax', 'cross_entropy', 'sem', 'w2', 'sem_flag', True, _classes),
    Head('norm', 3, None, 'regression', 'norm', 'w3', 'norm_flag', True, _normals,
         ('normalize_flag',), _turn_normals),
    Head('edge', 1, 'relu', 'regression', 'edge', 'w4', 'edge_flag', False, _edges,
         ('roof_height_threshold', 'canny_lt', 'canny_ht')),
)
HEIGHT = HEADS[0]
NAMES = tuple(h.name for h in HEADS)
TERMS = tuple(h.term for h in HEADS)
FLAGS = tuple(h.flag for h in HEADS if h.flag)


def select(**switches):
    """The heads switched on, in table order. `switches` names heads by their
    output name (sem=False); a head not named is on by its default."""
    unknown = set(switches) - {h.name for h in HEADS if h.flag}
    if unknown:
        raise TypeError(f"no head to switch named {sorted(unknown)}: the switchable "
                        f"heads are {[h.name for h in HEADS if h.flag]}")
    return [h for h in HEADS if h.flag is None or switches.get(h.name, h.default)]


def switches(cfg):
    """The head switches of the settings `cfg` (config.py's names), as select() takes them."""
    return {h.name: bool(getattr(cfg, h.flag)) for h in HEADS if h.flag}


def from_config(cfg):
    """The heads the settings `cfg` switch on."""
    return select(**switches(cfg))
