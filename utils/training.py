"""The data-parallel training loop shared by train_mtl.py and train_dae.py.

Trainer(task, strategy) trains what a task of utils/tasks.py describes (its
network, losses, inputs, validation and settings, task.cfg) on the strategy
the script built. One `strategy.run` step per batch over a distributed tf.data dataset; the
loss is averaged over the GLOBAL batch, so N replicas with B/N examples each
apply the same update as one replica with B. Everything needed to continue
(weights, Adam slots, dropout RNG, epoch and position in the epoch, best
metric, early-stopping counter) is checkpointed, so a killed run resumes
where it stopped and sees exactly the batches it would have seen.
"""
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from utils import checkpoints, datasets, distribute, heads, plots, progress
from utils.errors import SettingError, TrainingDiverged

LOWER_IS_BETTER = ('rmse', 'mae', 'mse')
TERM_ORDER = heads.TERMS + ('loss',)   # as the step reports them


def make_optimizer(task, model):
    """Adam with the task's settings, slots built now (inside the strategy scope)."""
    optimizer = keras.optimizers.Adam(learning_rate=task.lr, beta_1=task.beta_1,
                                      epsilon=task.cfg.adam_epsilon)
    if task.cfg.mixed_precision == 'mixed_float16':
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer


def _logger(directory, chief):
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


def _has_synchronized_bn(model):
    """True when the model, or a model inside it, has a synchronised BN layer."""
    layers = list(model.layers)
    while layers:
        layer = layers.pop()
        if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized:
            return True
        layers.extend(getattr(layer, 'layers', []))
    return False


def _share_overflow(grads):
    """Make one replica's float16 overflow every replica's. Keras'
    LossScaleOptimizer skips or applies a step by the first replica's own
    gradients (before they are summed), so an overflow on another replica
    would reach the weights; NaN on all replicas makes all of them skip."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads
                            if g is not None])
    overflows = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(overflows > 0, float('nan'), 0.0)
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]


class Trainer:
    """Trains the network of `task` (utils/tasks.py) on `strategy`.

    The task builds the network inside the strategy's scope and gives the
    step its loss terms (terms_fn(batch, training) -> {term: per-example
    loss}) and their per-example total; its validate(strategy) returns the
    validation metrics.
    """

    def __init__(self, task, strategy):
        self.task, self.strategy, self.cfg = task, strategy, task.cfg
        self.stage = task.stage
        with strategy.scope():
            self.model = task.build_model()
        self.terms_fn, self.total_fn = task.loss_fns()
        # Every layout refuses an empty or missing valid split (datasets.py), so
        # only train_valid_flag = False trains without validation images: the
        # run then keeps its last weights, under their own name.
        self.validated = bool(self.cfg.train_valid_flag)
        self.best_path = task.weights_path(self.validated)
        self.chief = distribute.is_chief(strategy)
        self.dir = task.run_dir
        self.global_batch = task.batch_size * strategy.num_replicas_in_sync
        with strategy.scope():
            self.optimizer = make_optimizer(task, self.model)
        # The step counter moves inside the compiled step, together with the
        # weights, so an interrupt can never separate the two.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch_start = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best = tf.Variable(np.nan, dtype=tf.float64, trainable=False)
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
        # model.variables, not the model: Keras 3 models do not track their
        # dropout seed state for tf.train.Checkpoint, and resuming needs it.
        self.checkpoint = tf.train.Checkpoint(
            model_variables=list(self.model.variables), optimizer=self.optimizer,
            step=self.step, epoch=self.epoch, epoch_start=self.epoch_start,
            best=self.best, bad_epochs=self.bad_epochs)
        self.history = []
        self.notes = list(task.notes)   # (name, text) lines the run's description adds
        self._step_fns = {}   # one step, or a loop of n (built on first use)

    # ------------------------------------------------------------ one step
    def _gradients(self, batch):
        """Forward and backward on one replica's batch: (loss terms, gradients)."""
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            terms = self.terms_fn(batch, training=True)
            loss = tf.nn.compute_average_loss(self.total_fn(terms),
                                              global_batch_size=self.global_batch)
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
            scaled = self.optimizer.scale_loss(loss)   # identity unless float16
        grads = tape.gradient(scaled, variables)
        report = {k: tf.nn.compute_average_loss(v, global_batch_size=self.global_batch)
                  for k, v in terms.items()}
        report['loss'] = loss
        return report, grads

    def _replica_step(self, batch):
        # With jit_compile only the forward and backward are XLA-compiled: the
        # gradient all-reduce and the update stay with tf.distribute, which
        # cannot place its collectives inside an XLA cluster.
        report, grads = self._gradient_fn(batch)
        if isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer) and \
                self.strategy.num_replicas_in_sync > 1:
            grads = _share_overflow(grads)
        # A float16 overflow makes the optimizer skip the update and halve the
        # loss scale (it unscales the gradients itself); the reported float32
        # loss terms stay finite, so that is no divergence.
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return report, tf.shape(batch['image'])[0]

    def _build_step(self, loop):
        """tf.function(iterator, n): n distributed steps, in a graph loop if
        `loop` (small steps then do not wait on Python between launches).
        Without it the function holds one step: a call of one step (the
        default) then has no loop to trace and optimise, and its first call,
        which dominates a short run, takes about three quarters of the time
        (bench/RESULTS.md, test suite)."""
        strategy = self.strategy
        if self.cfg.jit_compile and strategy.num_replicas_in_sync > 1 and \
                _has_synchronized_bn(self.model):
            # Synchronised BN all-reduces inside the forward pass, which
            # tf.distribute cannot do from within a compiled function.
            raise SettingError(
                "jit_compile = True and sync_batchnorm = True cannot be combined on "
                f"{strategy.num_replicas_in_sync} replicas: set one of them to False "
                "(compare both with python test_multi_gpu.py --benchmark)")
        self._gradient_fn = (tf.function(self._gradients, jit_compile=True)
                             if self.cfg.jit_compile else self._gradients)
        local = len(strategy.extended.worker_devices) \
            if strategy.num_replicas_in_sync > 1 else 1
        names = []   # the loss terms the step reports, known once it is traced

        def one_step(it):
            report, count = strategy.run(self._replica_step, (next(it),))
            unknown = sorted(set(report) - set(TERM_ORDER))
            if unknown:
                raise ValueError(f"loss terms {unknown}: name the terms of terms_fn "
                                 f"among {TERM_ORDER[:-1]}")
            names[:] = [k for k in TERM_ORDER if k in report]
            terms = tf.stack([strategy.reduce(tf.distribute.ReduceOp.SUM, report[k],
                                              axis=None) if k in report else 0.0
                              for k in TERM_ORDER])
            self.step.assign_add(1)
            return terms, tf.stack(strategy.experimental_local_results(count))

        def single(it, n):
            terms, counts = one_step(it)
            return {k: terms[TERM_ORDER.index(k)] for k in names}, counts

        def steps(it, n):
            totals = tf.zeros([len(TERM_ORDER)])
            counts = tf.zeros([local], tf.int32)
            for _ in tf.range(n):
                terms, count = one_step(it)
                totals += terms
                counts += count
            means = totals / tf.cast(n, tf.float32)
            return {k: means[TERM_ORDER.index(k)] for k in names}, counts
        return tf.function(steps if loop else single)

    def train_step(self, iterator, steps=None):
        """`steps` distributed steps in one call (default steps_per_execution):
        (global loss terms averaged over those steps, examples each local
        replica received in them). The iterator must hold that many batches."""
        steps = self.cfg.steps_per_execution if steps is None else steps
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps_per_execution = {steps}: use a whole number >= 1")
        loop = steps > 1
        if loop not in self._step_fns:
            self._step_fns[loop] = self._build_step(loop)
        report, counts = self._step_fns[loop](iterator, tf.constant(int(steps), tf.int64))
        return {k: float(v) for k, v in report.items()}, [int(c) for c in counts.numpy()]

    # ------------------------------------------------------------ saving
    def _manager(self):
        # Only the chief keeps files; the other workers must still take part
        # in the save (it is collective), so they write to a scratch folder.
        directory = os.path.join(self.dir, 'train_state')
        if not self.chief:
            directory = tempfile.mkdtemp(prefix='dsmnet_worker_')
        return tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)

    def save(self):
        step = int(self.step.numpy())
        path = self.manager.save(checkpoint_number=step)
        if self.chief:
            with open(os.path.join(self.dir, 'history.json.tmp'), 'w') as f:
                json.dump(self.history, f, indent=1)
            os.replace(os.path.join(self.dir, 'history.json.tmp'),
                       os.path.join(self.dir, 'history.json'))
            self.log.info(f"checkpoint saved: {path} (step {step})")
        else:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
            self.manager = self._manager()

    def _restore_or_start(self):
        state = os.path.join(self.dir, 'train_state')
        if checkpoints.saved_states(state) and not self.cfg.resume:
            aside = f"{self.dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            if self.chief:
                shutil.move(self.dir, aside)
                print(f"resume = False: the previous run was moved to {aside}")
        self.log = _logger(self.dir, self.chief)
        restored = checkpoints.restore_newest_readable(
            self.checkpoint, state, self.log, self.chief) if self.cfg.resume else None
        self.manager = self._manager()
        if restored:
            history = os.path.join(self.dir, 'history.json')
            if os.path.exists(history):
                with open(history) as f:
                    self.history = json.load(f)
            self.log.info(f"resuming from {restored} at step {int(self.step.numpy())}")

    # ------------------------------------------------------------ the loop
    def _describe(self, steps):
        replicas, cfg = self.strategy.num_replicas_in_sync, self.cfg
        lines = [
            f"== {self.stage.upper()} training on {cfg.dataset_name} ==",
            f"strategy        {type(self.strategy).__name__}, {replicas} replica(s)",
            f"batch           {self.global_batch // replicas} per replica, "
            f"{self.global_batch} global",
            f"images          {len(datasets.find_split(cfg, 'train'))} train, "
            f"{len(datasets.find_split(cfg, 'valid')) if cfg.train_valid_flag else 0} valid",
            f"samples/epoch   {steps * self.global_batch}",
            f"steps per epoch {steps}, epochs {self.task.epochs}",
            f"checkpoints     {os.path.join(self.dir, 'train_state')} "
            f"(every {cfg.checkpoint_every} steps and at epoch ends)",
            self._kept(),
            f"logs            {os.path.join(self.dir, 'train.log')}, TensorBoard: "
            f"{os.path.join(self.dir, 'tensorboard')}",
        ] + [f"{name:<16}{text}" for name, text in self.notes]
        self.log.info('\n'.join(lines))

    def _kept(self):
        """The log line saying which weights the run keeps, and where."""
        if self.validated:
            return f"best weights    {self.best_path} (by validation {self.cfg.eval_metric})"
        return (f"last weights    {self.best_path} (no validation, train_valid_flag = "
                f"False: the weights at the end of each epoch replace them)")

    def _check_finite(self, report, step):
        for name in TERM_ORDER:
            if name in report and not math.isfinite(report[name]):
                raise TrainingDiverged(
                    f"loss term '{name}' is {report[name]} at step {step}. Training "
                    f"stopped; the last good checkpoint in "
                    f"{os.path.join(self.dir, 'train_state')} is untouched. Look for "
                    f"NaN or extreme values in the data, or lower the learning rate.")

    def _save_weights(self, extra=None):
        checkpoints.save_weights(self.model, self.best_path, self.stage, self.cfg, extra,
                                 self.task.imagery)

    def _improved(self, value):
        best = float(self.best.numpy())
        if math.isnan(best):
            return True
        cfg = self.cfg
        if cfg.eval_metric in LOWER_IS_BETTER:
            return value < best - cfg.early_stop_delta
        return value > best + cfg.early_stop_delta

    def _end_epoch(self, epoch, train_means, finished=True):
        """Validate, keep the best weights, log; True to stop early. An
        unfinished epoch (max_steps) does not count towards early stopping,
        and its record is replaced once the epoch is resumed and ends."""
        record = {'epoch': epoch + 1, 'lr': float(self.optimizer.learning_rate.numpy()),
                  **{f'train_{k}': v for k, v in train_means.items()}}
        cfg = self.cfg
        metrics = self.task.validate(self.strategy) if self.validated else None
        stop = False
        if metrics is None:   # nothing held out: keep the latest weights
            if self.chief:
                self._save_weights(extra={'epoch': epoch + 1, 'kept': 'last'})
        else:
            value = float(metrics[cfg.eval_metric])
            record.update({f'val_{k}': v for k, v in metrics.items()
                           if isinstance(v, (int, float))})
            if self._improved(value):
                self.best.assign(value)
                self.bad_epochs.assign(0)
                if self.chief:
                    self._save_weights(extra={'epoch': epoch + 1, 'metrics': record})
                    self.log.info(f"best {cfg.eval_metric} so far: {value:.4f}, "
                                  f"weights saved: {self.best_path}")
            elif finished:
                self.bad_epochs.assign_add(1)
                stop = cfg.early_stop_flag and \
                    int(self.bad_epochs.numpy()) >= cfg.early_stop_patience
        if self.history and self.history[-1]['epoch'] == epoch + 1:
            self.history[-1] = record      # the same epoch, resumed after max_steps
        else:
            self.history.append(record)
        self.log.info('epoch %d: %s', epoch + 1, ', '.join(
            f"{k} {v:.4g}" for k, v in record.items() if k != 'epoch'))
        if self.chief:
            with self.writer.as_default(step=epoch + 1):
                for k, v in record.items():
                    if k.startswith('val_'):
                        tf.summary.scalar(f'validation/{k[4:]}', v)
            if cfg.plot_metrics or cfg.plot_train_error:
                plots.plot_history(self.history, os.path.join(self.dir, 'metrics.png'))
        return stop

    def fit(self):
        """Train until the epochs run out, early stopping, or max_steps."""
        cfg, task = self.cfg, self.task
        self._restore_or_start()
        steps = task.steps_per_epoch(self.global_batch)
        epochs = task.epochs
        self._describe(steps)
        self.writer = tf.summary.create_file_writer(
            os.path.join(self.dir, 'tensorboard') if self.chief else
            tempfile.mkdtemp(prefix='dsmnet_tb_'))
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            while int(self.epoch.numpy()) < epochs and not self._done():
                epoch = int(self.epoch.numpy())
                skip = int(self.step.numpy() - self.epoch_start.numpy())
                decay = 0.5 ** epoch if task.lr_decay else 1.0
                self.optimizer.learning_rate.assign(task.lr * decay)
                dataset = task.train_dataset(self.global_batch, epoch, skip)
                iterator = iter(self.strategy.experimental_distribute_dataset(dataset))
                self.log.info(f"epoch {epoch + 1}/{epochs}")
                bar = progress.Progress(steps, self.log.info)
                sums, n = {}, 0
                done = skip
                while done < steps and not self._done():
                    # Several steps per call (steps_per_execution), never past
                    # the epoch's end or max_steps.
                    k = min(cfg.steps_per_execution, steps - done)
                    if cfg.max_steps > 0:
                        k = min(k, cfg.max_steps - int(self.step.numpy()))
                    start = time.perf_counter()
                    report, _ = self.train_step(iterator, k)
                    step, done = int(self.step.numpy()), done + k
                    self._check_finite(report, step)
                    sums = {name: sums.get(name, 0.0) + v * k for name, v in report.items()}
                    n += k
                    rate = k * self.global_batch / max(time.perf_counter() - start, 1e-9)
                    bar.update(done, {**report, 'samples/s': rate})
                    if self.chief:
                        with self.writer.as_default(step=step):
                            for name, v in report.items():
                                tf.summary.scalar(f'train/{name}', v)
                            tf.summary.scalar('train/learning_rate',
                                              self.optimizer.learning_rate.numpy())
                    every = cfg.checkpoint_every
                    crossed = step // every > (step - k) // every
                    if crossed and done < steps and not self._done():  # else the epoch end saves
                        self.save()
                # max_steps can stop a run inside an epoch: it is validated (a
                # short run keeps its best weights) but stays unfinished, so a
                # resumed run goes on with its remaining batches.
                finished = done >= steps
                stop = self._end_epoch(epoch, {k: v / max(n, 1) for k, v in sums.items()},
                                       finished)
                if finished:
                    self.epoch.assign(epoch + 1)
                    self.epoch_start.assign(self.step)
                self.save()
                if stop:
                    self.log.info(f"early stopping: no {cfg.eval_metric} improvement "
                                  f"larger than {cfg.early_stop_delta} for "
                                  f"{cfg.early_stop_patience} epochs")
                    break
        except KeyboardInterrupt:
            self.save()
            self.log.info("interrupted: state saved; run the same command to resume")
            raise SystemExit(130)
        if self.chief and not os.path.exists(self.best_path):
                self._save_weights()
        self.log.info(f"done after {int(self.step.numpy())} steps; "
                      f"{'best' if self.validated else 'last'} weights: {self.best_path}")
        return self.history

    def _done(self):
        return self.cfg.max_steps > 0 and int(self.step.numpy()) >= self.cfg.max_steps


def _interrupt(signum, frame):
    # SLURM and Kubernetes send SIGTERM before killing: save as for Ctrl-C.
    raise KeyboardInterrupt
