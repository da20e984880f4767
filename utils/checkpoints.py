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
SETTING_OF_INIT = {'mtl': 'mtl_init_weights', 'dae': 'dae_init_weights'}


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


def _trained_settings(path):
    """The settings in the .json beside a weights file ({} without one)."""
    if not os.path.exists(path + '.json'):
        return {}
    with open(path + '.json') as f:
        return json.load(f).get('settings', {})


def init_weights(model, kind):
    """Start `model` from the file config.<kind>_init_weights names
    (fine-tuning); returns what it did, for the training log, or None when
    the setting is None.

    The settings that shape the network must be the file's, except
    label_codes: with another class list the layers that depend on it start
    as built (the MTL's semantic output; the DAE's first convolution where it
    reads the semantic probabilities) and everything else is loaded."""
    setting = SETTING_OF_INIT[kind]
    path = getattr(config, setting)
    if path is None:
        return None
    if not os.path.exists(path):
        raise CheckpointError(f"{setting} = {path!r}: no such file. Fix: point it at a "
                              f"best.weights.h5 written by train_{kind}.py, or set it to None.")
    trained = _trained_settings(path)
    current = _jsonable(_settings(kind))
    for key in ARCHITECTURE[kind]:
        if key != 'label_codes' and key in trained and trained[key] != current[key]:
            raise CheckpointError(
                f"{setting} = {path!r} was trained with {key}={trained[key]!r} but config "
                f"has {key}={current[key]!r}. Fix: --set {key}={trained[key]!r} to start "
                f"from it, or another {setting}.")
    codes = trained.get('label_codes', current['label_codes'])
    if codes == current['label_codes'] or not config.sem_flag:
        _load(model, path, setting, kind)
        return f"{path} (every layer)"
    from nets import dae as dae_net, mtl as mtl_net
    donor = mtl_net.build_from_config(pretrained=False, num_classes=len(codes)) \
        if kind == 'mtl' else dae_net.build_from_config(num_classes=len(codes))
    _load(donor, path, setting, kind)
    fresh = _transfer(donor, model, len(codes))
    return (f"{path}; label_codes differ from its {codes}: {', '.join(fresh)} "
            f"re-initialised, every other layer loaded")


def _load(model, path, setting, kind):
    try:
        model.load_weights(path)
    except Exception as err:   # a file of the other network, or truncated
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{setting} = {path!r} does not fit the configured "
                              f"{kind.upper()} ({reason[:160]}). Fix: a weights file "
                              f"train_{kind}.py wrote.") from err


def _transfer(donor, model, donor_classes):
    """Copy every layer of `donor` whose weights have the shapes of `model`'s;
    the DAE's first convolution channel by channel except the semantic
    probabilities'. Returns what stays as built, in words."""
    from nets import dae as dae_net
    from utils import datasets
    fresh = []
    # Layer by layer in build order: the same code built both, and Keras
    # numbers unnamed layers (an encoder's) per process, not per model.
    for layer, twin in zip(model.layers, donor.layers, strict=True):
        source = twin.get_weights()
        target = layer.get_weights()
        if [w.shape for w in source] == [w.shape for w in target]:
            layer.set_weights(source)
        elif layer.name == dae_net.FIRST_CONV:
            kernel, bias = target
            parts = [dae_net.input_parts(n, datasets.image_channels(), **heads.switches(config))
                     for n in (donor_classes, len(config.label_codes))]
            start = [0, 0]
            for (name, old), (_, new) in zip(*parts):
                if name != 'sem':
                    kernel[:, :, start[1]:start[1] + new] = source[0][:, :, start[0]:start[0] + old]
                start = [start[0] + old, start[1] + new]
            layer.set_weights([kernel, source[1]])
            fresh.append(f"{layer.name} (the semantic input channels)")
        else:
            fresh.append(layer.name)
    return fresh
