"""Train a few steps on fixed global batches and save the initial weights,
the all-reduced gradient and the weights after the first step, and every
step's loss (run by test_training.py and test_gpu.py in their own
processes, since devices are configured once). The MTL is built on the
stand-in encoder (tests/stand_in.py): distribution is under test, and
DenseNet121 took four fifths of the MTL runs' time.

    python tests/replica_run.py OUT.npz mtl|dae STEPS [NAME=VALUE ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import settings  # noqa: E402

out, stage, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
# The published optimizer settings (config.py); the batch statistics over
# the global batch unless the caller sets sync_batchnorm=False.
settings.apply(['cropSize=32', 'mtl_decoder_scale=0.0625', 'dae_width_scale=0.0625',
                'dropout_rate=0', 'sync_batchnorm=True', 'backbone_weights=None']
               + sys.argv[4:])

from utils import distribute  # noqa: E402
distribute.start_tensorflow()   # as the scripts start it
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import config  # noqa: E402
from stand_in import small_encoder  # noqa: E402
from utils.train import tasks  # noqa: E402
from utils.train.trainer import Trainer  # noqa: E402

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
with small_encoder():
    trainer = Trainer(
        (tasks.MTLTask(config) if stage == 'mtl' else tasks.DAETask(config, mtl='untrained')),
        strategy)
model = trainer.model
initial = [v.numpy() for v in model.trainable_variables]
dataset = tf.data.Dataset.from_tensor_slices(data).batch(GLOBAL_BATCH)
iterator = iter(strategy.experimental_distribute_dataset(dataset))
optimizer = trainer.optimizer
counts, reports, after_first = [], [], {}
for step in range(steps):
    report, per_replica = trainer.train_step(iterator)
    counts.append(per_replica)
    reports.append(report['loss'])
    if step == 0:
        # Adam's moments after its first step are (1 - beta_1) g and
        # (1 - beta_2) g^2: the all-reduced gradient, read without touching the step.
        for i, v in enumerate(model.trainable_variables):
            index = optimizer._get_variable_index(v)
            after_first[f'm_{i}'] = optimizer._momentums[index].numpy()
            after_first[f'v_{i}'] = optimizer._velocities[index].numpy()
            after_first[f'w_{i}'] = v.numpy()
np.savez(out, counts=np.array(counts), losses=np.array(reports),
         replicas=strategy.num_replicas_in_sync,
         iterations=int(optimizer.iterations.numpy()),
         lr=float(optimizer.learning_rate.numpy()), epsilon=optimizer.epsilon,
         beta_1=optimizer.beta_1, beta_2=optimizer.beta_2, **after_first,
         **{f'init_{i}': w for i, w in enumerate(initial)})
