"""The data-parallel training loop shared by train_mtl.py and train_dae.py.

Trainer(task, strategy) trains what a task of utils/tasks.py describes (its
network, losses, inputs, validation and settings, task.cfg) on the strategy
the script built. One `strategy.run` step per batch over a distributed tf.data dataset; the
loss is averaged over the GLOBAL batch, so N replicas with B/N examples each
apply the same update as one replica with B. Everything needed to continue
(weights, Adam slots, dropout RNG, epoch and position in the epoch, best
metric, early-stopping counter) is checkpointed, so a killed run resumes
where it stopped and sees exactly the batches it would have seen
(checkpoints.TrainingState); the weights kept, early stopping and the
TensorBoard scalars are objects of utils/callbacks.py.
"""
import logging
import os
import signal
import time

import keras
import tensorflow as tf

from utils import callbacks, checkpoints, distribute, heads, progress
from utils.errors import SettingError, WorkerLost

TERM_ORDER = heads.TERMS + ('loss',)   # as the step reports them


class Trainer:
    """Trains the network of `task` (utils/tasks.py) on `strategy`.

    The task builds the network and its optimizer inside the strategy's
    scope, gives its loss terms (terms_fn(batch, training) -> {term:
    per-example loss}) and their per-example total, and runs forward and
    backward (task.gradients) on each replica; its validate(strategy)
    returns the validation metrics. Every attribute is set here, so save()
    works before fit().
    """

    def __init__(self, task, strategy):
        self.task, self.strategy, self.cfg = task, strategy, task.cfg
        self.stage = task.stage
        with strategy.scope():
            self.model = task.build_model()
        self.losses = task.loss_fns()     # (terms_fn, total_fn)
        # Every layout refuses an empty or missing valid split (datasets.py), so
        # only train_valid_flag = False trains without validation images: the
        # run then keeps its last weights, under their own name.
        self.validated = bool(self.cfg.train_valid_flag)
        self.best_path = task.weights_path(self.validated)
        self.chief = distribute.is_chief(strategy)
        self.dir = task.run_dir
        self.global_batch = task.batch_size * strategy.num_replicas_in_sync
        with strategy.scope():
            self.optimizer = task.make_optimizer(self.model)
        cfg = self.cfg
        self.kept = callbacks.BestWeights(self.best_path, cfg.eval_metric,
                                          cfg.early_stop_delta, self.validated)
        self.early_stop = callbacks.EarlyStopping(cfg.early_stop_flag, cfg.early_stop_patience)
        self.board = callbacks.Board(self.dir, self.chief,
                                     cfg.plot_metrics or cfg.plot_train_error)
        # The step counter moves inside the compiled step, together with the
        # weights, so an interrupt can never separate the two.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch_start = tf.Variable(0, dtype=tf.int64, trainable=False)
        # model.variables, not the model: Keras 3 models do not track their
        # dropout seed state for tf.train.Checkpoint, and resuming needs it.
        self.state = checkpoints.TrainingState(
            self.dir, self.chief, model_variables=list(self.model.variables),
            optimizer=self.optimizer, step=self.step, epoch=self.epoch,
            epoch_start=self.epoch_start, best=self.kept.best,
            bad_epochs=self.early_stop.bad_epochs)
        self.log = logging.getLogger('dsmnet')   # run_log adds the run's file in fit()
        self.notes = list(task.notes)   # (name, text) lines the run's description adds
        self._step_fns = {}   # one step, or a loop of n (built on first use)

    checkpoint = property(lambda self: self.state.checkpoint)
    manager = property(lambda self: self.state.manager)
    history = property(lambda self: self.state.history)

    # ------------------------------------------------------------ one step
    def _replica_step(self, batch):
        # With jit_compile only the forward and backward are XLA-compiled: the
        # gradient all-reduce and the update stay with tf.distribute, which
        # cannot place its collectives inside an XLA cluster.
        report, grads = self._gradient_fn(batch)
        if isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer) and \
                self.strategy.num_replicas_in_sync > 1:
            grads = distribute.share_overflow(grads)
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
                distribute.has_synchronized_bn(self.model):
            # Synchronised BN all-reduces inside the forward pass, which
            # tf.distribute cannot do from within a compiled function.
            raise SettingError(
                "jit_compile = True and sync_batchnorm = True cannot be combined on "
                f"{strategy.num_replicas_in_sync} replicas: set one of them to False "
                "(compare both with python test_multi_gpu.py --benchmark)")
        def gradients(batch):
            return self.task.gradients(self.model, self.optimizer, self.losses, batch,
                                       self.global_batch)
        self._gradient_fn = (tf.function(gradients, jit_compile=True)
                             if self.cfg.jit_compile else gradients)
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

    def _cluster_step(self, iterator, steps):
        """train_step; in a multi-worker run, a peer that stopped (its
        collective aborted: UNAVAILABLE) is a one-line error saying how the
        job resumes, not a gRPC traceback."""
        try:
            return self.train_step(iterator, steps)
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
                f"every worker with the same command and TF_CONFIG; {resume} (checkpoint_every = {self.cfg.checkpoint_every} "
                f"steps at most are lost).") from None

    # ------------------------------------------------------------ saving
    def save(self):
        self.state.save(int(self.step.numpy()), self.log)

    def _restore_or_start(self):
        self.state.set_aside(self.cfg.resume)
        self.log = callbacks.run_log(self.dir, self.chief)
        restored = self.state.restore(self.log, self.cfg.resume)
        if restored:
            self.log.info(f"resuming from {restored} at step {int(self.step.numpy())}")

    # ------------------------------------------------------------ the loop
    def _end_epoch(self, epoch, train_means, finished=True):
        """Validate, keep the best weights, log; True to stop early. An
        unfinished epoch (max_steps) does not count towards early stopping,
        and its record is replaced once the epoch is resumed and ends."""
        record = {'epoch': epoch + 1, 'lr': float(self.optimizer.learning_rate.numpy()),
                  **{f'train_{k}': v for k, v in train_means.items()}}
        metrics = self.task.validate(self.strategy) if self.validated else None
        stop = False
        if metrics is None:   # nothing held out: keep the latest weights
            if self.chief:
                self.kept.keep(self.model, self.task, {'epoch': epoch + 1, 'kept': 'last'})
        else:
            value = float(metrics[self.cfg.eval_metric])
            record.update({f'val_{k}': v for k, v in metrics.items()
                           if isinstance(v, (int, float))})
            improved = self.kept.improved(value)
            if improved:
                self.kept.best.assign(value)
            stop = self.early_stop.update(improved, finished)
            if improved and self.chief:
                self.kept.keep(self.model, self.task, {'epoch': epoch + 1, 'metrics': record})
                self.log.info(f"best {self.cfg.eval_metric} so far: {value:.4f}, "
                              f"weights saved: {self.best_path}")
        if self.history and self.history[-1]['epoch'] == epoch + 1:
            self.history[-1] = record      # the same epoch, resumed after max_steps
        else:
            self.history.append(record)
        self.log.info('epoch %d: %s', epoch + 1, ', '.join(
            f"{k} {v:.4g}" for k, v in record.items() if k != 'epoch'))
        self.board.epoch(epoch + 1, record, self.history)
        return stop

    def fit(self):
        """Train until the epochs run out, early stopping, or max_steps."""
        cfg, task = self.cfg, self.task
        self._restore_or_start()
        steps = task.steps_per_epoch(self.global_batch)
        epochs = task.epochs
        self.log.info(callbacks.describe_run(self, steps))
        self.board.open()
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
                    report, _ = self._cluster_step(iterator, k)
                    step, done = int(self.step.numpy()), done + k
                    callbacks.check_finite(report, step, self.state.folder)
                    sums = {name: sums.get(name, 0.0) + v * k for name, v in report.items()}
                    n += k
                    rate = k * self.global_batch / max(time.perf_counter() - start, 1e-9)
                    bar.update(done, {**report, 'samples/s': rate})
                    self.board.train(step, report, self.optimizer.learning_rate.numpy())
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
            self.kept.keep(self.model, self.task)
        self.log.info(f"done after {int(self.step.numpy())} steps; "
                      f"{'best' if self.validated else 'last'} weights: {self.best_path}")
        return self.history

    def _done(self):
        return self.cfg.max_steps > 0 and int(self.step.numpy()) >= self.cfg.max_steps


def _interrupt(signum, frame):
    # SLURM and Kubernetes send SIGTERM before killing: save as for Ctrl-C.
    raise KeyboardInterrupt
