"""Take a batch from a training pipeline and end with its iterator still
alive at module level, as a short script would (test_pipeline.py checks
that the process exits).

    python tests/exit_run.py [NAME=VALUE ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import settings  # noqa: E402

settings.apply(sys.argv[1:])

import config  # noqa: E402
from utils import distribute, tasks  # noqa: E402


strategy = distribute.get_strategy(config)
dataset = tasks.MTLTask(config).train_dataset(config.mtl_global_batch_size, epoch=0)
iterator = iter(strategy.experimental_distribute_dataset(dataset))
batch = next(iterator)
print(f"took a batch on {strategy.num_replicas_in_sync} replica(s)", flush=True)
