"""Train a few steps on fixed global batches and save the weights (run by
test_training.py in its own process, since devices are configured once).

    python tests/replica_run.py OUT.npz mtl|dae STEPS [NAME=VALUE ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import settings  # noqa: E402

out, stage, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
# A large Adam epsilon makes each update proportional to its gradient, so a
# loss scaled per replica instead of per global batch would show.
settings.apply(['cropSize=32', 'mtl_decoder_scale=0.0625', 'dae_width_scale=0.0625',
                'dropout_rate=0', 'sync_batchnorm=True', 'backbone_weights=None',
                'adam_epsilon=1.0', 'mtl_lr=10', 'dae_lr=10'] + sys.argv[4:])

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import config  # noqa: E402
from utils import distribute, tasks, training  # noqa: E402

GLOBAL_BATCH = 8
rng = np.random.default_rng(7)
n, c = GLOBAL_BATCH * steps, config.cropSize
height = rng.uniform(0, 20, (n, c, c, 1)).astype('float32')
data = {'image': rng.uniform(0, 1, (n, c, c, 3)).astype('float32'), 'height': height,
        'mask': (rng.uniform(0, 1, height.shape) > 0.1).astype('float32'),
        'sem': rng.integers(0, len(config.label_codes), (n, c, c), dtype='int32'),
        'norm': rng.uniform(0, 1, (n, c, c, 3)).astype('float32')}

strategy = distribute.get_strategy(config)
assert getattr(config, f'{stage}_global_batch_size') == GLOBAL_BATCH, 'set batch_size'


class Task(tasks.MTLTask if stage == 'mtl' else tasks.DAETask):
    def build_model(self):
        model = super().build_model()
        # DenseNet's 120 BN layers in training mode turn float32 rounding into
        # percent-level gradient noise at a 1x1 bottleneck (1 and 2 replicas
        # alike); in inference mode every encoder weight still trains and is
        # compared. Our own encoder_bn stays synchronised and in training mode.
        for layer in self.mtl.get_layer('densenet121').layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        return model


trainer = training.Trainer(Task(config, **({'mtl': 'untrained'} if stage == 'dae' else {})),
                           strategy)
model = trainer.model
initial = [v.numpy() for v in model.trainable_variables]
dataset = tf.data.Dataset.from_tensor_slices(data).batch(GLOBAL_BATCH)
iterator = iter(strategy.experimental_distribute_dataset(dataset))
counts, reports = [], []
for _ in range(steps):
    report, per_replica = trainer.train_step(iterator)
    counts.append(per_replica)
    reports.append(report['loss'])
np.savez(out, counts=np.array(counts), losses=np.array(reports),
         replicas=strategy.num_replicas_in_sync,
         iterations=int(trainer.optimizer.iterations.numpy()),
         **{f'init_{i}': w for i, w in enumerate(initial)},
         **{f'w_{i}': v.numpy() for i, v in enumerate(model.trainable_variables)})
