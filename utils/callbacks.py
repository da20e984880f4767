"""What the training loop does around its steps, each an object of its own
that utils/training.Trainer calls and a test can build alone: the run's log
(run_log), the weights it keeps (BestWeights), early stopping
(EarlyStopping) and its TensorBoard scalars and figures (Board). The
variables of BestWeights and EarlyStopping go into the training state, so a
resumed run goes on with them."""
import logging
import math
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

from utils import checkpoints, datasets, plots
from utils.errors import TrainingDiverged

LOWER_IS_BETTER = ('rmse', 'mae', 'mse')


def describe_run(trainer, steps):
    """The run's description, the first lines of its log."""
    replicas, cfg = trainer.strategy.num_replicas_in_sync, trainer.cfg
    lines = [
        f"== {trainer.stage.upper()} training on {cfg.dataset_name} ==",
        f"strategy        {type(trainer.strategy).__name__}, {replicas} replica(s)",
        f"batch           {trainer.global_batch // replicas} per replica, "
        f"{trainer.global_batch} global",
        f"images          {len(datasets.find_split(cfg, 'train'))} train, "
        f"{len(datasets.find_split(cfg, 'valid')) if cfg.train_valid_flag else 0} valid",
        f"samples/epoch   {steps * trainer.global_batch}",
        f"steps per epoch {steps}, epochs {trainer.task.epochs}",
        f"checkpoints     {os.path.join(trainer.dir, 'train_state')} "
        f"(every {cfg.checkpoint_every} steps and at epoch ends)",
        trainer.kept.describe(),
        f"logs            {os.path.join(trainer.dir, 'train.log')}, TensorBoard: "
        f"{os.path.join(trainer.dir, 'tensorboard')}",
    ] + [f"{name:<16}{text}" for name, text in trainer.notes]
    return '\n'.join(lines)


def check_finite(report, step, state_folder):
    """TrainingDiverged at the first loss term of `report` that is not finite."""
    for name, value in report.items():
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"loss term '{name}' is {value} at step {step}. Training "
                f"stopped; the last good checkpoint in {state_folder} is untouched. "
                f"Look for NaN or extreme values in the data, or lower the learning rate.")


def run_log(directory, chief):
    """The 'dsmnet' logger: lines on stdout and, on the chief, with their
    time in <directory>/train.log."""
    log = logging.getLogger('dsmnet')
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter('%(message)s'))
    log.addHandler(console)
    if chief:
        os.makedirs(directory, exist_ok=True)
        handler = logging.FileHandler(os.path.join(directory, 'train.log'))
        handler.setFormatter(logging.Formatter('%(asctime)s %(message)s'))
        log.addHandler(handler)
    return log


class BestWeights:
    """The weights file a run keeps at `path` for the next stage: with
    validation (`validated`), those of the best epoch by `metric`, an epoch
    counting as better when it improves on `best` by more than `delta`;
    without, those at each epoch's end."""

    def __init__(self, path, metric, delta, validated):
        self.path, self.metric, self.delta, self.validated = path, metric, delta, validated
        self.best = tf.Variable(np.nan, dtype=tf.float64, trainable=False)

    def improved(self, value):
        best = float(self.best.numpy())
        if math.isnan(best):
            return True
        if self.metric in LOWER_IS_BETTER:
            return value < best - self.delta
        return value > best + self.delta

    def keep(self, model, task, extra=None):
        """Write the weights of `model` with the settings and training images
        of `task` (checkpoints.save_weights)."""
        checkpoints.save_weights(model, self.path, task.stage, task.cfg, extra, task.imagery)

    def describe(self):
        """The log line saying which weights the run keeps, and where."""
        if self.validated:
            return f"best weights    {self.path} (by validation {self.metric})"
        return (f"last weights    {self.path} (no validation, train_valid_flag = "
                f"False: the weights at the end of each epoch replace them)")


class EarlyStopping:
    """Stop after `patience` finished epochs in a row without improvement
    (`enabled`: early_stop_flag)."""

    def __init__(self, enabled, patience):
        self.enabled, self.patience = enabled, patience
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)

    def update(self, improved, finished):
        """Count an epoch; True to stop. An unfinished epoch (max_steps) does
        not count."""
        if improved:
            self.bad_epochs.assign(0)
        elif finished:
            self.bad_epochs.assign_add(1)
            return self.enabled and int(self.bad_epochs.numpy()) >= self.patience
        return False


class Board:
    """TensorBoard scalars in <run_dir>/tensorboard (a scratch folder off the
    chief) and the history figure <run_dir>/metrics.png (`plot`). open()
    starts the event file, once the run folder is settled."""

    def __init__(self, run_dir, chief, plot):
        self.dir, self.chief, self.plot = run_dir, chief, plot
        self.writer = None

    def open(self):
        self.writer = tf.summary.create_file_writer(
            os.path.join(self.dir, 'tensorboard') if self.chief else
            tempfile.mkdtemp(prefix='dsmnet_tb_'))

    def train(self, step, report, learning_rate):
        if self.chief:
            with self.writer.as_default(step=step):
                for name, v in report.items():
                    tf.summary.scalar(f'train/{name}', v)
                tf.summary.scalar('train/learning_rate', learning_rate)

    def epoch(self, epoch, record, history):
        if self.chief:
            with self.writer.as_default(step=epoch):
                for k, v in record.items():
                    if k.startswith('val_'):
                        tf.summary.scalar(f'validation/{k[4:]}', v)
            if self.plot:
                plots.plot_history(history, os.path.join(self.dir, 'metrics.png'))
