"""Best-weights files with the settings that shape the network beside them.

`<path>` holds the Keras weights, `<path>.json` the settings; loading checks
them against config.py so a wrong flag is reported by name instead of as a
shape error deep inside Keras. Both files are written to a temporary name
and renamed, so an interrupted write never replaces a good file.
"""
import json
import os

import config
from utils import heads
from utils.errors import CheckpointError

# The settings that change the layers of each network (the head switches first).
ARCHITECTURE = {
    'mtl': heads.FLAGS + ('mtl_head_mode', 'mtl_decoder_scale', 'sar_mode', 'label_codes'),
    'dae': heads.FLAGS + ('dae_width_scale', 'sar_mode', 'label_codes'),
}
SETTING_OF_PATH = {'mtl': 'predCheckPointPath', 'dae': 'corrCheckPointPath'}


# Settings recorded beside the weights that predict.py takes unless the user
# sets them: the window size and how image values were scaled.
ADOPTED = ('cropSize', 'image_scale')


def _settings(kind):
    return {k: getattr(config, k) for k in ARCHITECTURE[kind] + ADOPTED} | {
        'dataset_name': config.dataset_name}


def _imagery():
    """How the training images were fed: band order (1-based, as --bands)
    and, when the training split was checked, their band statistics."""
    from utils import datasets
    channels = datasets.image_channels()
    return {'bands': list(range(1, channels + 1)), **datasets.training_images}


def _jsonable(value):
    return json.loads(json.dumps(value))


def save_weights(model, path, kind, extra=None):
    """Write weights and settings atomically; `extra` (e.g. metrics) goes in the JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path[:-len('.weights.h5')] + '.tmp.weights.h5'
    model.save_weights(tmp)
    with open(path + '.json.tmp', 'w') as f:
        json.dump({'kind': kind, 'settings': _settings(kind), 'imagery': _imagery(),
                   **(extra or {})}, f, indent=2, default=float)
    os.replace(tmp, path)
    os.replace(path + '.json.tmp', path + '.json')


def adopt_settings(path, kind, keep=()):
    """Take the architecture settings, cropSize and image_scale saved beside
    the weights file `path` into config, except the names in `keep` (set by
    the user, so load_weights reports a mismatch instead). Returns the
    file's 'imagery' record ({} without one). No .json: nothing changes."""
    from utils import settings
    meta_path = path + '.json'
    if not os.path.exists(meta_path):
        return {}
    with open(meta_path) as f:
        meta = json.load(f)
    trained = meta.get('settings', {})
    for key in ARCHITECTURE[kind] + ADOPTED:
        if key in trained and key not in keep:
            settings.override(key, trained[key])
    return meta.get('imagery', {})


def load_weights(model, path, kind):
    """Load weights saved by save_weights, checking the architecture settings first."""
    setting = SETTING_OF_PATH[kind]
    if not os.path.exists(path):
        stage = 'train_mtl.py' if kind == 'mtl' else 'train_dae.py'
        raise CheckpointError(
            f"no {kind.upper()} weights at {path} ({setting}). Train them first with "
            f"`python {stage}` (same --set options), or point {setting} at the file.")
    meta_path = path + '.json'
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            trained = json.load(f).get('settings', {})
        current = _jsonable(_settings(kind))
        for key in ARCHITECTURE[kind]:
            if key in trained and trained[key] != current[key]:
                raise CheckpointError(
                    f"{path} was trained with {key}={trained[key]!r} but config has "
                    f"{key}={current[key]!r}. Run with --set {key}={trained[key]!r} "
                    f"(dataset {trained.get('dataset_name')!r}), or train new weights.")
    try:
        model.load_weights(path)
    except Exception as err:   # a file from another network or a truncated file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path} ({setting}) does not fit the configured {kind.upper()} "
            f"({reason[:160]}). Fix: use the weights trained with these settings, or "
            f"their settings (the .json written beside the weights).") from err
