"""Best-weights files with the settings that shape the network beside them,
and the training state a run resumes from (TrainingState).

`<path>` holds the Keras weights, `<path>.json` the settings; loading checks
them against the run's settings `cfg` so a wrong flag is reported by name instead of as a
shape error deep inside Keras. Both files are written to a temporary name
and renamed, so an interrupted write never replaces a good file.
"""
import glob
import json
import os
import shutil
import tempfile
import time

import tensorflow as tf

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


def _settings(cfg, kind):
    return {k: getattr(cfg, k) for k in ARCHITECTURE[kind] + ADOPTED} | {
        'dataset_name': cfg.dataset_name}


def _imagery(cfg, statistics):
    """How the training images were fed: band order (1-based, as --bands)
    and their band statistics (`statistics`, from the training split's
    check: datasets.SplitSummary.imagery(); {} when it was not checked)."""
    from utils import datasets
    channels = datasets.image_channels(cfg)
    return {'bands': list(range(1, channels + 1)), **(statistics or {})}


def _jsonable(value):
    return json.loads(json.dumps(value))


def save_weights(model, path, kind, cfg, extra=None, imagery=None):
    """Write weights and the settings `cfg` atomically; `extra` (e.g. metrics)
    goes in the JSON, `imagery` (the training images' band statistics) with
    the band order."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path[:-len('.weights.h5')] + '.tmp.weights.h5'
    model.save_weights(tmp)
    with open(path + '.json.tmp', 'w') as f:
        json.dump({'kind': kind, 'settings': _settings(cfg, kind),
                   'imagery': _imagery(cfg, imagery),
                   **(extra or {})}, f, indent=2, default=float)
    os.replace(tmp, path)
    os.replace(path + '.json.tmp', path + '.json')


def adopted_settings(path, kind, keep=()):
    """(settings, imagery) saved beside the weights file `path`: the
    architecture settings, cropSize and image_scale ({name: value}), except
    the names in `keep` (set by the user, so load_weights reports a mismatch
    instead), for Settings.replace; and the file's 'imagery' record. No
    .json: ({}, {})."""
    meta_path = path + '.json'
    if not os.path.exists(meta_path):
        return {}, {}
    with open(meta_path) as f:
        meta = json.load(f)
    trained = meta.get('settings', {})
    adopted = {key: trained[key] for key in ARCHITECTURE[kind] + ADOPTED
               if key in trained and key not in keep}
    return adopted, meta.get('imagery', {})


def trained_settings(cfg, mtl_path, dae_path=None, keep=()):
    """(settings, imagery): `cfg` with the settings saved beside the MTL
    weights and, if given, the DAE weights adopted (adopted_settings), and
    the MTL weights' imagery record. predict.py and export.py run on them."""
    adopted, imagery = adopted_settings(mtl_path, 'mtl', keep)
    if dae_path:
        adopted.update(adopted_settings(dae_path, 'dae', keep)[0])
    return cfg.replace(**adopted), imagery


def load_weights(model, path, kind, cfg):
    """Load weights saved by save_weights, checking the architecture settings
    (those of `cfg`) first."""
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
        current = _jsonable(_settings(cfg, kind))
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


def init_weights(model, kind, build, cfg):
    """Start `model` from the file cfg.<kind>_init_weights names
    (fine-tuning); returns what it did, for the training log, or None when
    the setting is None. build(num_classes): the same network for another
    class count (utils/tasks.py), for a file of another class list.

    The settings that shape the network must be the file's, except
    label_codes: with another class list the layers that depend on it start
    as built (the MTL's semantic output; the DAE's first convolution where it
    reads the semantic probabilities) and everything else is loaded."""
    setting = SETTING_OF_INIT[kind]
    path = getattr(cfg, setting)
    if path is None:
        return None
    if not os.path.exists(path):
        raise CheckpointError(f"{setting} = {path!r}: no such file. Fix: point it at a "
                              f"best.weights.h5 written by train_{kind}.py, or set it to None.")
    trained = _trained_settings(path)
    current = _jsonable(_settings(cfg, kind))
    for key in ARCHITECTURE[kind]:
        if key != 'label_codes' and key in trained and trained[key] != current[key]:
            raise CheckpointError(
                f"{setting} = {path!r} was trained with {key}={trained[key]!r} but config "
                f"has {key}={current[key]!r}. Fix: --set {key}={trained[key]!r} to start "
                f"from it, or another {setting}.")
    codes = trained.get('label_codes', current['label_codes'])
    if codes == current['label_codes'] or not cfg.sem_flag:
        _load(model, path, setting, kind)
        return f"{path} (every layer)"
    donor = build(len(codes))
    _load(donor, path, setting, kind)
    fresh = _transfer(donor, model, len(codes), cfg)
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


def _transfer(donor, model, donor_classes, cfg):
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
            parts = [dae_net.input_parts(n, datasets.image_channels(cfg), **heads.switches(cfg))
                     for n in (donor_classes, len(cfg.label_codes))]
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


# ----------------------------------------------------------------- training state
# What reading a damaged checkpoint raises: TensorFlow's errors (a bad index,
# a checksum, a missing file), IndexError (a data file shorter than its index).
_READ_ERRORS = (tf.errors.OpError, IndexError)


def _first_line(err):
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def saved_states(state):
    """{checkpoint prefix: time saved or None}, oldest first: the manager's own
    list, or every ckpt-N.index in `state` when that list is lost."""
    listed = tf.train.get_checkpoint_state(state) if os.path.isdir(state) else None
    if listed and listed.all_model_checkpoint_paths:
        paths = list(listed.all_model_checkpoint_paths)
        return dict(zip(paths, list(listed.all_model_checkpoint_timestamps) or
                        [None] * len(paths)))
    found = [p[:-len('.index')] for p in glob.glob(os.path.join(state, 'ckpt-*.index'))]
    found = sorted((p for p in found if p.rsplit('-', 1)[1].isdigit()),
                   key=lambda p: int(p.rsplit('-', 1)[1]))
    return {p: os.path.getmtime(p + '.index') for p in found}


def _damage(prefix):
    """None if every tensor of checkpoint `prefix` reads back (each is checked
    against its checksum), else (the damaged file, the reader's complaint)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
    except _READ_ERRORS as err:
        return os.path.basename(prefix) + '.index', _first_line(err)
    try:
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except _READ_ERRORS as err:
        data = sorted(os.path.basename(p) for p in glob.glob(prefix + '.data-*'))
        return ', '.join(data) or os.path.basename(prefix) + '.data-*', _first_line(err)
    return None


def _track_only(state, saved, kept):
    """Make the CheckpointManager of `state` track `kept` (oldest first) and
    nothing newer: damaged files stay on disk but never count among the two
    checkpoints it keeps."""
    times = [saved[p] for p in kept]
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel('ERROR')     # the call's deprecation notice would only confuse
    try:
        tf.compat.v1.train.update_checkpoint_state(
            state, os.path.basename(kept[-1]), [os.path.basename(p) for p in kept],
            all_model_checkpoint_timestamps=None if None in times else times)
    finally:
        logger.setLevel(level)


def restore_newest_readable(checkpoint, state, log, chief=True):
    """Restore into `checkpoint` (a tf.train.Checkpoint) the newest state
    saved in the folder `state` that reads back whole; its prefix, or None
    if there is none.

    A damaged one (a truncated copy, a full disk) is named in a warning on
    `log` and the one before it restored over every variable, so nothing
    half-read from the damaged one survives; the chief then makes the
    manager's list forget the damaged ones.
    """
    saved = saved_states(state)
    damaged = []
    for prefix in reversed(saved):
        problem = _damage(prefix)
        if problem is None:
            try:
                checkpoint.restore(prefix).assert_existing_objects_matched()
            except _READ_ERRORS as err:
                problem = (f"{os.path.basename(prefix)}.*", _first_line(err))
        if problem is not None:
            damaged.append(problem)
            log.warning(f"warning: {problem[0]} in {state} is damaged "
                        f"({problem[1]}); trying the checkpoint before it")
            continue
        if chief and (damaged or tf.train.get_checkpoint_state(state) is None):
            _track_only(state, saved, list(saved)[:list(saved).index(prefix) + 1])
        return prefix
    if damaged:
        files = ', '.join(name for name, _ in damaged)
        raise CheckpointError(
            f"no readable checkpoint in {state}: {files} damaged ({damaged[-1][1]}); "
            f"put intact copies there, or set resume = False to start again "
            f"(the run folder is moved aside)")
    return None


class TrainingState:
    """What a run resumes from: `variables` (weights, optimizer, counters; the
    names are the checkpoint's keys) in a tf.train.Checkpoint of which the
    two newest are kept in <run_dir>/train_state, and the epoch records
    (`history`) beside them in history.json. Only the chief keeps files; the
    other workers take part in every save (it is collective) in a scratch
    folder. save() works from construction on."""

    def __init__(self, run_dir, chief, **variables):
        self.dir, self.chief = run_dir, chief
        self.folder = os.path.join(run_dir, 'train_state')
        self.checkpoint = tf.train.Checkpoint(**variables)
        self.history = []
        self.manager = self._manager()

    def _manager(self):
        directory = self.folder if self.chief else tempfile.mkdtemp(prefix='dsmnet_worker_')
        return tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)

    def set_aside(self, resume):
        """With resume = False, a previous run's folder is moved aside (by the
        chief) before this run writes anything."""
        if saved_states(self.folder) and not resume:
            aside = f"{self.dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            if self.chief:
                shutil.move(self.dir, aside)
                print(f"resume = False: the previous run was moved to {aside}")

    def restore(self, log, resume):
        """With `resume`, restore the newest readable state and its history
        (restore_newest_readable); its prefix, or None for a new run."""
        restored = restore_newest_readable(
            self.checkpoint, self.folder, log, self.chief) if resume else None
        self.manager = self._manager()
        history = os.path.join(self.dir, 'history.json')
        if restored and os.path.exists(history):
            with open(history) as f:
                self.history = json.load(f)
        return restored

    def save(self, step, log):
        path = self.manager.save(checkpoint_number=step)
        if self.chief:
            with open(os.path.join(self.dir, 'history.json.tmp'), 'w') as f:
                json.dump(self.history, f, indent=1)
            os.replace(os.path.join(self.dir, 'history.json.tmp'),
                       os.path.join(self.dir, 'history.json'))
            log.info(f"checkpoint saved: {path} (step {step})")
        else:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
            self.manager = self._manager()
