"""Train a network a few steps under several performance settings, one
variant after the other from the same initial weights, and save what each
produced (run by test_performance.py in its own process: devices are
configured once per process).

    python tests/perf_run.py OUT.npz VARIANT [VARIANT ...] [--set NAME=VALUE ...]

VARIANT is `name:mtl|dae:calls[:NAME=VALUE,...]`. `calls` are the steps of each
train_step call joined by '+', e.g. `spe:dae:2+1` runs 3 steps in two calls
(`0`: no call; `d`: train_step's default, config.steps_per_execution).
Options: settings, plus `overflow=1` (heights 0 in the first half of every
batch, 1e8 m in the second: in float16 only the last replica overflows),
`save=PATH` (write the final weights file), `load=PATH` (load one first),
`stand_in=1` (the MTL on tests/stand_in.py's encoder, not DenseNet121).
The DAE trains alone on random inputs: its training step is under test here,
not the MTL's predictions.
"""
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import settings  # noqa: E402

args = sys.argv[1:]
out = args.pop(0)
base = [a for a, flag in zip(args[1:], args) if flag == '--set']
variants = [a for a, prev in zip(args, [''] + args) if a != '--set' and prev != '--set']
# Linear Adam (epsilon 1): updates proportional to the gradients, so a small
# numerical difference stays small instead of flipping a whole update.
settings.apply(['cropSize=32', 'mtl_decoder_scale=0.0625', 'dae_width_scale=0.0625',
                'dropout_rate=0', 'backbone_weights=None', 'adam_epsilon=1.0',
                'mtl_lr=1', 'dae_lr=1', 'mtl_bb_freeze=True'] + base)

from utils import distribute  # noqa: E402
distribute.start_tensorflow()   # as the scripts start it
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import config  # noqa: E402
from nets import dae as dae_net  # noqa: E402
from stand_in import small_encoder  # noqa: E402
from utils.model import networks, weights  # noqa: E402
from utils.model.weights import WeightsFile  # noqa: E402
from utils.train import losses, tasks  # noqa: E402
from utils.train.trainer import Trainer  # noqa: E402

GLOBAL_BATCH = 8
strategy = distribute.get_strategy(config)
assert config.global_batch_size == GLOBAL_BATCH, 'set batch_size'


def make_data(stage, steps, overflow):
    rng = np.random.default_rng(7)
    n, c = GLOBAL_BATCH * steps, config.cropSize
    height = rng.uniform(0, 20, (n, c, c, 1)).astype('float32')
    if overflow:
        per_step = height.reshape(steps, GLOBAL_BATCH, -1)
        per_step[:, :GLOBAL_BATCH // 2] = 0.0   # nothing to overflow
        per_step[:, GLOBAL_BATCH // 2:] = 1e8
    channels = 3 if stage == 'mtl' else dae_net.input_channels(len(config.label_codes))
    # Brightness varying per example, so batch statistics depend on which
    # examples a replica holds.
    image = rng.uniform(0, 1, (n, c, c, channels)) * rng.uniform(0.1, 1, (n, 1, 1, 1))
    return {'image': image.astype('float32'),
            'height': height,
            'mask': (rng.uniform(0, 1, height.shape) > 0.1).astype('float32'),
            'sem': rng.integers(0, len(config.label_codes), (n, c, c), dtype='int32'),
            'norm': rng.uniform(0, 1, (n, c, c, 3)).astype('float32')}


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, 'layers'):
            yield from _all_layers(layer)


def run(spec):
    name, stage, calls, *rest = spec.split(':')
    # Each variant starts from the defaults of the settings under test.
    options = {'mixed_precision': 'float32', 'jit_compile': 'False',
               'steps_per_execution': '1', 'sync_batchnorm': 'False'}
    options.update(s.split('=', 1) for s in ':'.join(rest).split(',') if s)
    overflow = options.pop('overflow', '0') == '1'
    stand_in = options.pop('stand_in', '0') == '1'
    save, load = options.pop('save', None), options.pop('load', None)
    settings.apply([f'{k}={v}' for k, v in options.items()])
    # What utils/distribute.py does once per process, again per variant.
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)

    class Variant(tasks.MTLTask if stage == 'mtl' else tasks.DAETask):
        def build_model(self):
            if stage == 'mtl':
                # The encoder frozen (mtl_bb_freeze), its BN layers in inference
                # mode: this keeps float32 rounding from growing into
                # percent-level gradient noise in DenseNet's 120 BN layers, and
                # the step's graph builds in a third of the time. The options
                # under test still act on all of it: the encoder's forward pass in
                # the mixed precision, our BN (encoder_bn) synchronised, the
                # decoder trained.
                with small_encoder() if stand_in else contextlib.nullcontext():
                    self.model = networks.build_mtl(config)
            else:
                self.model = networks.build_dae(config)
            if load:
                file = WeightsFile(load, stage)
                file.check(config)
                file.load_into(self.model)
            return self.model

        def loss_fns(self):
            model = self.model
            if stage == 'mtl':
                def terms(batch, training):
                    return losses.mtl_terms(batch, model(batch['image'], training=training),
                                            config)
                return terms, lambda t: losses.mtl_total(t, config)

            def terms(batch, training):
                noise = model(batch['image'], training=training)
                return {'dsm': losses.regression(batch['height'], noise, batch['mask'])}
            return terms, lambda t: t['dsm']

    names = ('loss', 'dsm', 'sem', 'norm') if stage == 'mtl' else ('loss', 'dsm')
    calls = [c for c in calls.split('+') if c != '0']
    steps_run = sum(config.steps_per_execution if c == 'd' else int(c) for c in calls)
    data = make_data(stage, max(1, steps_run), overflow)
    trainer = Trainer(Variant(config), strategy)
    model = trainer.model
    initial = [v.numpy() for v in model.trainable_variables]
    iterator = iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(data).batch(GLOBAL_BATCH)))
    reports, counts = [], []
    for steps in calls:
        report, count = trainer.train_step(iterator, steps=None if steps == 'd' else int(steps))
        reports.append([report[k] for k in names])
        counts.append(count)
    if save:
        weights.save(model, save, stage, config)
    outputs = model(tf.constant(data['image'][:GLOBAL_BATCH]), training=False)
    if stage == 'dae':
        outputs = {'height': outputs}
    result = {'losses': np.array(reports), 'counts': np.array(counts),
              'step': int(trainer.step.numpy()),
              'iterations': int(trainer.optimizer.iterations.numpy()),
              'policy': keras.mixed_precision.global_policy().name,
              'compute_dtype': str(model.get_layer(
                  'height1_deconv' if stage == 'mtl' else 'enc1_conv1').compute_dtype),
              'output_dtypes': ','.join(str(v.dtype.name) for v in outputs.values()),
              'outputs': np.concatenate([v.numpy() for v in outputs.values()], -1),
              'loss_scale': float(trainer.optimizer.dynamic_scale.numpy())
              if hasattr(trainer.optimizer, 'dynamic_scale') else 0.0}
    if stage == 'mtl':
        # The moving statistics minus what is left of their initial values
        # (0 and 1): the part that the batches' statistics contributed.
        bn = model.get_layer('encoder_bn')
        left = bn.momentum ** steps_run
        result.update(bn_mean=bn.moving_mean.numpy(), bn_var=bn.moving_variance.numpy() - left)
        # ... and of every BN layer that computed batch statistics (DenseNet121's
        # 120 with the encoder trained), in the order of the model's layers
        every = [layer for layer in _all_layers(model)
                 if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
        result.update({f'bn{i}_mean': layer.moving_mean.numpy() for i, layer in enumerate(every)})
        result.update({f'bn{i}_var': layer.moving_variance.numpy() - left
                       for i, layer in enumerate(every)})
    result.update({f'init_{i}': w for i, w in enumerate(initial)})
    result.update({f'w_{i}': v.numpy() for i, v in enumerate(model.trainable_variables)})
    return name, result


saved = {'replicas': strategy.num_replicas_in_sync}
for spec in variants:
    name, result = run(spec)
    saved.update({f'{name}/{k}': v for k, v in result.items()})
np.savez(out, **saved)
