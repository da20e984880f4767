"""The inner loop of both training stages: one distributed step, or a few
in one call, on the strategy the script built (Model Garden's trainer).

Trainer(task, strategy) builds the task's network and its optimizer inside
the strategy's scope and runs `strategy.run` of the task's forward,
losses and backward on every replica's share of a GLOBAL batch from a
distributed tf.data dataset. The loss is averaged over the global batch, so
N replicas with B/N examples each apply the same update as one replica
with B. The step counter moves inside the compiled step, together with the
weights. The outer loop (epochs, checkpoints, validation) is
utils/train/loop.py.
"""
import keras
import tensorflow as tf

from utils import distribute
from utils.errors import SettingError
from utils.model import heads

TERM_ORDER = heads.TERMS + ('loss',)   # as the step reports them


class Trainer:
    """Trains the network of `task` (utils/train/tasks.py) on `strategy`.

    The task builds the network and its optimizer inside the strategy's
    scope, gives its loss terms (terms_fn(batch, training) -> {term:
    per-example loss}) and their per-example total, and runs forward and
    backward (task.gradients) on each replica.
    """

    def __init__(self, task, strategy):
        self.task, self.strategy, self.cfg = task, strategy, task.cfg
        with strategy.scope():
            self.model = task.build_model()
        self.losses = task.loss_fns()     # (terms_fn, total_fn)
        self.global_batch = task.batch_size * strategy.num_replicas_in_sync
        with strategy.scope():
            self.optimizer = task.make_optimizer(self.model)
        # The step counter moves inside the compiled step, together with the
        # weights, so an interrupt can never separate the two.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._step_fns = {}   # one step, or a loop of n (built on first use)

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
