"""The training state a run resumes from: weights, optimizer slots, counters
and the epoch records, checkpointed in the run folder (TrainingState).

A damaged checkpoint (a truncated copy, a full disk) is named and the one
before it restored (restore_newest_readable).
"""
import glob
import json
import os
import shutil
import tempfile
import time

import tensorflow as tf

from utils.errors import CheckpointError, first_line

# What reading a damaged checkpoint raises: TensorFlow's errors (a bad index,
# a checksum, a missing file), IndexError (a data file shorter than its index).
_READ_ERRORS = (tf.errors.OpError, IndexError)


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
        return os.path.basename(prefix) + '.index', first_line(err)
    try:
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except _READ_ERRORS as err:
        data = sorted(os.path.basename(p) for p in glob.glob(prefix + '.data-*'))
        return ', '.join(data) or os.path.basename(prefix) + '.data-*', first_line(err)
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
                problem = (f"{os.path.basename(prefix)}.*", first_line(err))
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
