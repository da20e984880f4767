"""Run train_mtl.main() with NAME=VALUE settings, the MTL on the stand-in
encoder (tests/stand_in.py), and save the initial and final weights
(used by test_training.py for multi-worker runs, one process per worker).

    python tests/train_run.py OUT.npz NAME=VALUE ...
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import settings  # noqa: E402

settings.apply(sys.argv[2:])

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
np.savez(sys.argv[1], replicas=trainer.strategy.num_replicas_in_sync,
         step=int(trainer.step.numpy()), **initial,
         **{f'w_{i}': v.numpy() for i, v in enumerate(trainer.model.trainable_variables)})
