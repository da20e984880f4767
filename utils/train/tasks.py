"""The two training stages as tasks: what each trains, on what, by what loss.

A task owns one stage's settings (config.py names them with the stage's
prefix: mtl_lr, dae_batchSize, ...), builds its networks, gives the
training step its loss terms, describes its training data and validates
(TF Model Garden's task); the steps are utils/train/trainer.Trainer(task,
strategy), the epochs utils/train/loop.Loop(trainer). MTLTask trains the
multi-task network. DAETask trains the denoising autoencoder on the outputs
of an MTL, frozen; it runs in inference mode inside the same replica step as
the DAE. Either starts from a trained weights file when mtl_init_weights /
dae_init_weights names one (fine-tuning, utils/train/finetune.py).

A task is built once at a script's edge from the run's settings `cfg`
(utils/settings.Settings). train_mtl.py, train_dae.py, test_multi_gpu.py and
the benchmarks all make their tasks here, so they train the same thing.
"""
import os

from utils.data.layouts import find_split, is_tile_dataset
from utils.evaluate import evaluation
from utils.model import networks
from utils.model.weights import SETTING_OF_PATH, STAGES, WeightsFile
from utils.train import finetune, losses, pipeline


class Task:
    """One stage's settings, networks, losses, inputs and validation.

    build_model() runs inside the strategy's scope (Trainer calls it there)
    and returns the network the stage trains; loss_fns() then gives
    (terms_fn, total_fn) for it, and gradients() the step's forward, losses
    and backward, which the Trainer runs on every replica. imagery: the
    training images' band statistics (data/checks.SplitSummary.imagery()),
    recorded beside the best weights. notes: (name, text) lines for the
    training log's header.
    """
    stage = None

    def __init__(self, cfg, imagery=None):
        self.cfg = cfg
        self.imagery = dict(imagery or {})
        self.notes = []
        self._data = None

    def _own(self, name):
        # The one place a stage's prefixed settings are looked up.
        return getattr(self.cfg, f'{self.stage}_{name}')

    lr = property(lambda self: self._own('lr'))
    beta_1 = property(lambda self: self._own('beta_1'))
    lr_decay = property(lambda self: self._own('lr_decay'))
    batch_size = property(lambda self: self._own('batchSize'))    # per replica
    epochs = property(lambda self: self._own('numEpochs'))
    training_samples = property(lambda self: self._own('training_samples'))
    preload = property(lambda self: self._own('preload'))
    init_weights = property(lambda self: self._own('init_weights'))

    def weights_path(self, validated=True):
        """Where training keeps the weights the next stage loads: the file the
        stage's setting names; by default (a file of the run folder) the best
        weights by validation, or without validation the last weights."""
        path = getattr(self.cfg, SETTING_OF_PATH[self.stage])
        kept = [os.path.join(self.run_dir, name)
                for name in (self.cfg.BEST_WEIGHTS, self.cfg.LAST_WEIGHTS)]
        return kept[0 if validated else 1] if path in kept else path

    @property
    def run_dir(self):
        return os.path.join(self.cfg.checkpoint_root, self.cfg.dataset_name, self.stage)

    def make_optimizer(self, model):
        """Adam with the stage's settings, slots built now (inside the strategy scope)."""
        import keras
        from utils.train.adam import Adam
        optimizer = Adam(learning_rate=self.lr, beta_1=self.beta_1, epsilon=self.cfg.adam_epsilon)
        if self.cfg.mixed_precision == 'mixed_float16':
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        return optimizer

    def gradients(self, model, optimizer, losses, batch, global_batch):
        """The stage's step on one replica's batch, forward and backward:
        (loss terms averaged over the global batch, 'loss' their total,
        gradients of model's trainable variables). losses: loss_fns()."""
        import tensorflow as tf
        terms_fn, total_fn = losses
        with tf.GradientTape() as tape:
            terms = terms_fn(batch, training=True)
            loss = tf.nn.compute_average_loss(total_fn(terms), global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)   # identity unless float16
        grads = tape.gradient(scaled, model.trainable_variables)
        report = {k: tf.nn.compute_average_loss(v, global_batch_size=global_batch)
                  for k, v in terms.items()}
        report['loss'] = loss
        return report, grads

    def training_data(self):
        """The stage's TrainingData (utils/train/pipeline.py), its samples found once."""
        if self._data is None:
            cfg = self.cfg
            self._data = pipeline.TrainingData(
                cfg, tuple(find_split(cfg, 'train')), is_tile_dataset(cfg),
                self.training_samples, self.preload, self.stage)
        return self._data

    def steps_per_epoch(self, global_batch):
        return pipeline.steps_per_epoch(self.training_data(), global_batch)

    def train_dataset(self, global_batch, epoch, skip_batches=0):
        return pipeline.train_dataset(self.training_data(), global_batch, epoch, skip_batches)

    def _start_from_file(self, model, build):
        start = finetune.start_from(model, self.stage, build, self.cfg)
        if start:
            self.notes.append(('starts from', start))


class MTLTask(Task):
    stage = 'mtl'

    def build_model(self):
        # Weights to start from replace the encoder's too: no ImageNet download.
        self.mtl = networks.build_mtl(self.cfg, pretrained=self.init_weights is None)
        self._start_from_file(self.mtl, lambda n: networks.build_mtl(self.cfg, False, n))
        return self.mtl

    def loss_fns(self):
        return losses.mtl_step(self.mtl, self.cfg)

    def validate(self, strategy):
        return evaluation.validate(self.mtl, None, cfg=self.cfg, strategy=strategy)


class DAETask(Task):
    """mtl: the MTL whose height the DAE learns to correct: None for the
    trained one (predCheckPointPath), a Keras model, or 'untrained' for a
    freshly built one (checks and benchmarks that only time steps)."""
    stage = 'dae'

    def __init__(self, cfg, mtl=None, imagery=None):
        super().__init__(cfg, imagery)
        self._mtl = mtl

    def build_model(self):
        if self._mtl is None:
            weights = WeightsFile(self.cfg.predCheckPointPath, 'mtl')
            weights.check(self.cfg)
            self.mtl = networks.build_mtl(self.cfg, pretrained=False)
            weights.load_into(self.mtl)
        elif isinstance(self._mtl, str):
            if self._mtl != 'untrained':
                raise ValueError(f"mtl = {self._mtl!r}: use None, a Keras model or "
                                 f"'untrained'")
            self.mtl = networks.build_mtl(self.cfg)
        else:
            self.mtl = self._mtl
        self.mtl.trainable = False
        self.dae = networks.build_dae(self.cfg)
        self._start_from_file(self.dae, lambda n: networks.build_dae(self.cfg, n))
        return self.dae

    def loss_fns(self):
        return losses.dae_step(self.mtl, self.dae, self.cfg)

    def validate(self, strategy):
        return evaluation.validate(self.mtl, self.dae, cfg=self.cfg, strategy=strategy)


def make(stage, cfg, **options):
    """The task of a stage name ('mtl' or 'dae'); `options` go to its class."""
    if stage not in STAGES:
        raise ValueError(f"stage = {stage!r}: use 'mtl' or 'dae'")
    return (MTLTask if stage == 'mtl' else DAETask)(cfg, **options)
