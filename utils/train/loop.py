"""The outer loop of a training run (Orbit's controller): epochs of steps
run in chunks on the trainer, validation at each epoch's end, the training
state restored and saved, and the actions (utils/train/actions.py) called
around it all.

Everything needed to continue (weights, Adam slots, dropout RNG, epoch and
position in the epoch, the actions' variables: best metric, early-stopping
counter) is checkpointed at every epoch's end, every checkpoint_every steps
and on Ctrl-C or SIGTERM, so a killed run resumes where it stopped and sees
exactly the batches it would have seen (utils/train/state.py).
"""
import dataclasses
import logging
import os
import signal
import sys
import time

import tensorflow as tf

from utils import distribute
from utils.data.layouts import find_split
from utils.errors import WorkerLost
from utils.train import actions as standard_actions
from utils.train.state import TrainingState


@dataclasses.dataclass
class Epoch:
    """One epoch as the loop runs it: `done` of its `steps` (more than 0
    when resumed within it), the loss terms summed over the steps run, and
    at its end the `record` of the epoch, the validation `metrics` (None
    without validation), whether the metric `improved` and whether to `stop`."""
    index: int
    steps: int
    done: int
    sums: dict = dataclasses.field(default_factory=dict)
    count: int = 0
    record: dict = None
    metrics: dict = None
    improved: bool = False
    stop: bool = False

    @property
    def finished(self):
        return self.done >= self.steps

    def add(self, report, count):
        self.sums = {name: self.sums.get(name, 0.0) + v * count for name, v in report.items()}
        self.count += count

    def means(self):
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


class Loop:
    """Runs `trainer` (utils/train/trainer.py) epoch after epoch with
    `actions` (default: actions.standard for its settings)."""

    def __init__(self, trainer, actions=None):
        self.trainer, self.task, self.cfg = trainer, trainer.task, trainer.cfg
        cfg = self.cfg
        # Every layout refuses an empty or missing valid split (data/layouts.py),
        # so only train_valid_flag = False trains without validation images:
        # the run then keeps its last weights, under their own name.
        self.validated = bool(cfg.train_valid_flag)
        self.chief = distribute.is_chief(trainer.strategy)
        self.dir = self.task.run_dir
        self.kept = standard_actions.BestWeights(
            self.task.weights_path(self.validated), cfg.eval_metric, cfg.early_stop_delta,
            self.validated)
        self.actions = standard_actions.standard(cfg, self.kept) if actions is None else actions
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch_start = tf.Variable(0, dtype=tf.int64, trainable=False)
        # model.variables, not the model: Keras 3 models do not track their
        # dropout seed state for tf.train.Checkpoint, and resuming needs it.
        variables = {name: v for action in self.actions for name, v in action.variables.items()}
        self.state = TrainingState(
            self.dir, self.chief, model_variables=list(trainer.model.variables),
            optimizer=trainer.optimizer, step=trainer.step, epoch=self.epoch,
            epoch_start=self.epoch_start, **variables)
        self.log = logging.getLogger('dsmnet')   # run_log adds the run's file in fit()

    @property
    def best_path(self):
        return self.kept.path

    @property
    def history(self):
        return self.state.history

    def steps_done(self):
        return int(self.trainer.step.numpy())

    def max_steps_reached(self):
        return self.cfg.max_steps > 0 and self.steps_done() >= self.cfg.max_steps

    def save(self):
        self.state.save(self.steps_done(), self.log)

    def restore_or_start(self):
        """The run folder settled (set aside with resume = False), its log
        opened, and the newest readable state restored with resume = True."""
        self.state.set_aside(self.cfg.resume)
        self.log = run_log(self.dir, self.chief)
        restored = self.state.restore(self.log, self.cfg.resume)
        if restored:
            self.log.info(f"resuming from {restored} at step {self.steps_done()}")

    def _call(self, hook, *args):
        for action in self.actions:
            getattr(action, hook)(self, *args)

    def _steps(self, iterator, count):
        """trainer.train_step; in a multi-worker run, a peer that stopped (its
        collective aborted: UNAVAILABLE) is a one-line error saying how the
        job resumes, not a gRPC traceback."""
        try:
            return self.trainer.train_step(iterator, count)[0]
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as err:
            if distribute.task_type() is None:
                raise
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            reason = next((line for line in lines if 'aborted by' in line),
                          lines[0] if lines else type(err).__name__)
            latest = tf.train.latest_checkpoint(self.state.folder)
            resume = (f"training resumes from {latest}" if latest else
                      "no checkpoint was saved yet: training starts again")
            raise WorkerLost(
                f"a worker of the cluster stopped during training ({reason}). Fix: restart "
                f"every worker with the same command and TF_CONFIG; {resume} "
                f"(checkpoint_every = {self.cfg.checkpoint_every} steps at most are "
                f"lost).") from None

    def _run_epoch(self, epoch):
        """The epoch's remaining steps, `steps_per_execution` at a time, never
        past its end or max_steps."""
        cfg, trainer = self.cfg, self.trainer
        dataset = self.task.train_dataset(trainer.global_batch, epoch.index, epoch.done)
        iterator = iter(trainer.strategy.experimental_distribute_dataset(dataset))
        while not epoch.finished and not self.max_steps_reached():
            count = min(cfg.steps_per_execution, epoch.steps - epoch.done)
            if cfg.max_steps > 0:
                count = min(count, cfg.max_steps - self.steps_done())
            start = time.perf_counter()
            report = self._steps(iterator, count)
            seconds = time.perf_counter() - start
            epoch.done += count
            epoch.add(report, count)
            self._call('after_steps', epoch, report, count, seconds)

    def _end_epoch(self, epoch):
        """Validate and record the epoch, then the actions' end_epoch. An
        unfinished epoch (max_steps) is validated too (a short run keeps its
        best weights) but stays unfinished, so a resumed run goes on with
        its remaining batches."""
        epoch.record = {'epoch': epoch.index + 1,
                        'lr': float(self.trainer.optimizer.learning_rate.numpy()),
                        **{f'train_{k}': v for k, v in epoch.means().items()}}
        if self.validated:
            epoch.metrics = self.task.validate(self.trainer.strategy)
            if epoch.metrics is not None:  # None: no validation samples
                epoch.record.update({f'val_{k}': v for k, v in epoch.metrics.items()
                                     if isinstance(v, (int, float))})
        self._call('end_epoch', epoch)
        if epoch.finished:
            self.epoch.assign(epoch.index + 1)
            self.epoch_start.assign(self.trainer.step)
        self.save()

    def fit(self):
        """Train until the epochs run out, early stopping, or max_steps."""
        cfg, task = self.cfg, self.task
        self.restore_or_start()
        steps = task.steps_per_epoch(self.trainer.global_batch)
        self.log.info(describe(self, steps))
        self._call('start')
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            while int(self.epoch.numpy()) < task.epochs and not self.max_steps_reached():
                index = int(self.epoch.numpy())
                epoch = Epoch(index, steps, self.steps_done() - int(self.epoch_start.numpy()))
                self.log.info(f"epoch {index + 1}/{task.epochs}")
                self._call('begin_epoch', epoch)
                self._run_epoch(epoch)
                self._end_epoch(epoch)
                if epoch.stop:
                    self.log.info(f"early stopping: no {cfg.eval_metric} improvement "
                                  f"larger than {cfg.early_stop_delta} for "
                                  f"{cfg.early_stop_patience} epochs")
                    break
        except KeyboardInterrupt:
            self.save()
            self.log.info("interrupted: state saved; run the same command to resume")
            raise SystemExit(130)
        self._call('end')
        self.log.info(f"done after {self.steps_done()} steps; "
                      f"{'best' if self.validated else 'last'} weights: {self.best_path}")
        return self.history


def describe(loop, steps):
    """The run's description, the first lines of its log."""
    trainer, cfg = loop.trainer, loop.cfg
    replicas = trainer.strategy.num_replicas_in_sync
    valid = len(find_split(cfg, 'valid')) if cfg.train_valid_flag else 0
    lines = [
        f"== {loop.task.stage.upper()} training on {cfg.dataset_name} ==",
        f"strategy        {type(trainer.strategy).__name__}, {replicas} replica(s)",
        f"batch           {trainer.global_batch // replicas} per replica, "
        f"{trainer.global_batch} global",
        f"images          {len(loop.task.training_data().samples)} train, {valid} valid",
        f"samples/epoch   {steps * trainer.global_batch}",
        f"steps per epoch {steps}, epochs {loop.task.epochs}",
        f"checkpoints     {os.path.join(loop.dir, 'train_state')} "
        f"(every {cfg.checkpoint_every} steps and at epoch ends)",
        loop.kept.describe(),
        f"logs            {os.path.join(loop.dir, 'train.log')}, TensorBoard: "
        f"{os.path.join(loop.dir, 'tensorboard')}",
    ] + [f"{name:<16}{text}" for name, text in loop.task.notes]
    return '\n'.join(lines)


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


def _interrupt(signum, frame):
    # SLURM and Kubernetes send SIGTERM before killing: save as for Ctrl-C.
    raise KeyboardInterrupt
