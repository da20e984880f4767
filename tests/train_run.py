"""Run train_mtl.main() with NAME=VALUE settings, the MTL on the stand-in
encoder (tests/stand_in.py), and save the initial and final weights and
Adam's moments (used by test_multi_worker.py, one process per worker).

    python tests/train_run.py OUT.npz NAME=VALUE ...
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import settings  # noqa: E402

settings.apply(sys.argv[2:])

from utils import distribute  # noqa: E402
distribute.start_tensorflow()   # as the scripts start it
import numpy as np  # noqa: E402

import train_mtl  # noqa: E402
from stand_in import small_encoder  # noqa: E402
from utils.train.loop import Loop  # noqa: E402

initial = {}
fit = Loop.fit


def recorded_fit(loop):
    initial.update({f'init_{i}': v.numpy()
                    for i, v in enumerate(loop.trainer.model.trainable_variables)})
    return fit(loop)


Loop.fit = recorded_fit
with small_encoder():
    trainer = train_mtl.main().trainer
optimizer, variables = trainer.optimizer, trainer.model.trainable_variables
# Adam's moments (after one step: the all-reduced gradient) and constants
moments = {}
for i, v in enumerate(variables):
    index = optimizer._get_variable_index(v)
    moments.update({f'm_{i}': optimizer._momentums[index].numpy(),
                    f'v_{i}': optimizer._velocities[index].numpy()})
np.savez(sys.argv[1], replicas=trainer.strategy.num_replicas_in_sync,
         step=int(trainer.step.numpy()), **initial, **moments,
         lr=float(optimizer.learning_rate.numpy()), epsilon=optimizer.epsilon,
         beta_1=optimizer.beta_1, beta_2=optimizer.beta_2,
         **{f'w_{i}': v.numpy() for i, v in enumerate(variables)})
