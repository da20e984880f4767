"""Test-time transforms of the dihedral group D4: each window is also
predicted flipped and transposed, and the maps, turned back (the heads'
turn for values with a direction), are averaged (predict_flips)."""
import numpy as np

from utils.errors import SettingError
from utils.model import heads

# The D4 transforms as (transpose, flip rows, flip columns), applied in that
# order; with_flips uses the first N: 2 adds the left-right mirror, 4 is the
# group of flips, 8 all of D4.
D4 = ((False, False, False), (False, False, True), (False, True, False),
      (False, True, True), (True, False, False), (True, False, True),
      (True, True, False), (True, True, True))


def _transform(maps, transform):
    """maps [n, H, W, ...] as the network sees them under a D4 transform."""
    transpose, flip_rows, flip_cols = transform
    if transpose:
        maps = np.swapaxes(maps, 1, 2)
    if flip_rows:
        maps = maps[:, ::-1]
    if flip_cols:
        maps = maps[:, :, ::-1]
    return maps


def _inverse(transform):
    """The D4 transform undoing `transform`. Flips undo themselves; undoing a
    transpose done first means flipping, then transposing, and a flip before
    a transpose is the other axis's flip after it."""
    transpose, flip_rows, flip_cols = transform
    return (True, flip_cols, flip_rows) if transpose else transform


def _undo(maps, transform, key, cfg):
    """Output `key` predicted on transformed windows, back in the windows'
    frame: its pixels moved back, then its values turned (heads' turn)."""
    inverse = _inverse(transform)
    maps = _transform(maps, inverse)
    head = heads.by_name(key)
    if head is not None and head.turn is not None:
        maps = np.asarray(head.turn(maps, *inverse, cfg))
    return maps


def with_flips(predict_fn, flips, cfg):
    """predict_fn averaged over the first `flips` D4 transforms of each window
    (1: predict_fn itself). cfg: the settings the heads' turn functions read
    (normalize_flag for the normals). Its batch_size is predict_fn's divided
    by `flips`, so a batch of windows still fills the network's calls."""
    if flips == 1:
        return predict_fn
    if not 1 <= flips <= len(D4):
        raise SettingError(f"predict_flips = {flips}: use 1 to {len(D4)}")
    transforms = D4[:flips]

    def predict(windows):
        windows = np.asarray(windows, np.float32)
        n = len(windows)
        out = predict_fn(np.concatenate([_transform(windows, t) for t in transforms]))
        result = {}
        for key, maps in out.items():
            total = _undo(maps[:n], transforms[0], key, cfg).astype(np.float32)
            for i, t in enumerate(transforms[1:], 1):
                total += _undo(maps[i * n:(i + 1) * n], t, key, cfg)
            result[key] = total / np.float32(flips)
        return result

    predict.batch_size = max(1, getattr(predict_fn, 'batch_size', 8) // flips)
    return predict
