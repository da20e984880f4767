"""What the training loop (utils/train/loop.py) does around its steps, each
an Action: the learning-rate schedule, the stop on a NaN loss, the progress
line, the checkpoint cadence, the weights a run keeps, early stopping, the
epoch records and TensorBoard.

An Action answers five calls of the loop, each with the Loop itself (its
trainer, task, settings, log and counters): start (the run folder is
settled), begin_epoch and end_epoch (an Epoch: its index, steps done, loss
means, record, validation metrics), after_steps (the loss terms of the
steps just run, how many, in how many seconds) and end. Its `variables`
({name: tf.Variable}) go into the training state, so a resumed run goes on
with them. The loop calls the actions in the order standard() lists them.
"""
import math
import os
import tempfile

import numpy as np
import tensorflow as tf

from utils import plots
from utils.errors import TrainingDiverged
from utils.model import weights
from utils.progress import Progress

LOWER_IS_BETTER = ('rmse', 'mae', 'mse')


class Action:
    """Does nothing at every call; an action overrides those it needs."""
    variables = {}

    def start(self, loop):
        pass

    def begin_epoch(self, loop, epoch):
        pass

    def after_steps(self, loop, epoch, report, count, seconds):
        pass

    def end_epoch(self, loop, epoch):
        pass

    def end(self, loop):
        pass


class LearningRate(Action):
    """The stage's learning rate, halved after every epoch with its
    *_lr_decay setting."""

    def begin_epoch(self, loop, epoch):
        task = loop.task
        decay = 0.5 ** epoch.index if task.lr_decay else 1.0
        loop.trainer.optimizer.learning_rate.assign(task.lr * decay)


class StopOnNaN(Action):
    """TrainingDiverged at the first loss term that is not finite; the last
    good checkpoint stays as it was."""

    def after_steps(self, loop, epoch, report, count, seconds):
        for name, value in report.items():
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"loss term '{name}' is {value} at step {loop.steps_done()}. Training "
                    f"stopped; the last good checkpoint in {loop.state.folder} is untouched. "
                    f"Look for NaN or extreme values in the data, or lower the learning rate.")


class ProgressLine(Action):
    """The epoch's progress: loss terms and samples per second."""

    def begin_epoch(self, loop, epoch):
        self.bar = Progress(epoch.steps, loop.log.info)

    def after_steps(self, loop, epoch, report, count, seconds):
        rate = count * loop.trainer.global_batch / max(seconds, 1e-9)
        self.bar.update(epoch.done, {**report, 'samples/s': rate})


class Checkpoint(Action):
    """A checkpoint every `every` steps (checkpoint_every) within an epoch;
    the loop saves at every epoch's end and on an interrupt."""

    def __init__(self, every):
        self.every = every

    def after_steps(self, loop, epoch, report, count, seconds):
        step = loop.steps_done()
        crossed = step // self.every > (step - count) // self.every
        if crossed and not epoch.finished and not loop.max_steps_reached():
            loop.save()


class BestWeights(Action):
    """The weights file a run keeps at `path` for the next stage: with
    validation (`validated`), those of the best epoch by `metric`, an epoch
    counting as better when it improves on the best by more than `delta`;
    without, those at each epoch's end. Sets epoch.improved."""

    def __init__(self, path, metric, delta, validated):
        self.path, self.metric, self.delta, self.validated = path, metric, delta, validated
        self.best = tf.Variable(np.nan, dtype=tf.float64, trainable=False)
        self.variables = {'best': self.best}

    def improved(self, value):
        best = float(self.best.numpy())
        if math.isnan(best):
            return True
        if self.metric in LOWER_IS_BETTER:
            return value < best - self.delta
        return value > best + self.delta

    def keep(self, loop, extra=None):
        """Write the model's weights with the settings and training images of
        the loop's task (model/weights.save)."""
        task = loop.task
        weights.save(loop.trainer.model, self.path, task.stage, task.cfg, extra, task.imagery)

    def describe(self):
        """The log line saying which weights the run keeps, and where."""
        if self.validated:
            return f"best weights    {self.path} (by validation {self.metric})"
        return (f"last weights    {self.path} (no validation, train_valid_flag = "
                f"False: the weights at the end of each epoch replace them)")

    def end_epoch(self, loop, epoch):
        if epoch.metrics is None:   # nothing held out: keep the latest weights
            if loop.chief:
                self.keep(loop, {'epoch': epoch.index + 1, 'kept': 'last'})
            return
        value = float(epoch.metrics[self.metric])
        epoch.improved = self.improved(value)
        if epoch.improved:
            self.best.assign(value)
            if loop.chief:
                self.keep(loop, {'epoch': epoch.index + 1, 'metrics': epoch.record})
                loop.log.info(f"best {self.metric} so far: {value:.4f}, "
                              f"weights saved: {self.path}")

    def end(self, loop):
        if loop.chief and not os.path.exists(self.path):
            self.keep(loop)


class EarlyStopping(Action):
    """Stop after `patience` finished epochs in a row without improvement
    (`enabled`: early_stop_flag); an unfinished epoch (max_steps) does not
    count. Reads epoch.improved (BestWeights), sets epoch.stop."""

    def __init__(self, enabled, patience):
        self.enabled, self.patience = enabled, patience
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.variables = {'bad_epochs': self.bad_epochs}

    def update(self, improved, finished):
        """Count an epoch; True to stop."""
        if improved:
            self.bad_epochs.assign(0)
        elif finished:
            self.bad_epochs.assign_add(1)
            return self.enabled and int(self.bad_epochs.numpy()) >= self.patience
        return False

    def end_epoch(self, loop, epoch):
        if epoch.metrics is not None:
            epoch.stop = self.update(epoch.improved, epoch.finished)


class History(Action):
    """The epoch records (history.json beside the checkpoints) and the
    epoch's line in the log; an unfinished epoch's record (max_steps) is
    replaced once the epoch is resumed and ends."""

    def end_epoch(self, loop, epoch):
        history = loop.state.history
        if history and history[-1]['epoch'] == epoch.index + 1:
            history[-1] = epoch.record
        else:
            history.append(epoch.record)
        loop.log.info('epoch %d: %s', epoch.index + 1, ', '.join(
            f"{k} {v:.4g}" for k, v in epoch.record.items() if k != 'epoch'))


class Board(Action):
    """TensorBoard scalars in <run_dir>/tensorboard (a scratch folder off the
    chief) and, with `plot`, the history figure <run_dir>/metrics.png."""

    def __init__(self, plot):
        self.plot = plot
        self.writer = None

    def start(self, loop):
        self.writer = tf.summary.create_file_writer(
            os.path.join(loop.dir, 'tensorboard') if loop.chief else
            tempfile.mkdtemp(prefix='dsmnet_tb_'))

    def after_steps(self, loop, epoch, report, count, seconds):
        if loop.chief:
            with self.writer.as_default(step=loop.steps_done()):
                for name, v in report.items():
                    tf.summary.scalar(f'train/{name}', v)
                tf.summary.scalar('train/learning_rate',
                                  loop.trainer.optimizer.learning_rate.numpy())

    def end_epoch(self, loop, epoch):
        if loop.chief:
            with self.writer.as_default(step=epoch.index + 1):
                for k, v in epoch.record.items():
                    if k.startswith('val_'):
                        tf.summary.scalar(f'validation/{k[4:]}', v)
            if self.plot:
                plots.plot_history(loop.state.history, os.path.join(loop.dir, 'metrics.png'))


def standard(cfg, kept):
    """The actions of a training run with the settings `cfg`, in the order
    the loop calls them; `kept`: its BestWeights."""
    return [LearningRate(), StopOnNaN(), ProgressLine(), Checkpoint(cfg.checkpoint_every),
            kept, EarlyStopping(cfg.early_stop_flag, cfg.early_stop_patience), History(),
            Board(cfg.plot_metrics or cfg.plot_train_error)]
