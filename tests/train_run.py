"""Run train_mtl.main() with NAME=VALUE settings and save the final weights
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

trainer = train_mtl.main()
np.savez(sys.argv[1], replicas=trainer.strategy.num_replicas_in_sync,
         step=int(trainer.step.numpy()),
         **{f'w_{i}': v.numpy() for i, v in enumerate(trainer.model.trainable_variables)})
