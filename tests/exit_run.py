"""Take a batch from a training pipeline and end with its iterator still
alive at module level, as a short script would (test_pipeline.py checks
that the process exits).

    python tests/exit_run.py [OUT.npz] [NAME=VALUE ...]

With OUT.npz it also saves each replica's share of that first batch and
the first batch of the same pipeline built again, undistributed.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import settings  # noqa: E402

out = sys.argv.pop(1) if sys.argv[1:2] and sys.argv[1].endswith('.npz') else None
settings.apply(sys.argv[1:])

import config  # noqa: E402
from utils import distribute  # noqa: E402
distribute.start_tensorflow()   # as the scripts start it
from utils.train import tasks  # noqa: E402


strategy = distribute.get_strategy(config)
dataset = tasks.MTLTask(config).train_dataset(config.mtl_global_batch_size, epoch=0)
iterator = iter(strategy.experimental_distribute_dataset(dataset))
batch = next(iterator)
if out:
    import numpy as np
    whole = next(iter(tasks.MTLTask(config).train_dataset(config.mtl_global_batch_size,
                                                          epoch=0)))
    np.savez(out, whole=whole['image'].numpy(), **{
        f'share_{i}': share.numpy()
        for i, share in enumerate(strategy.experimental_local_results(batch['image']))})
print(f"took a batch on {strategy.num_replicas_in_sync} replica(s)", flush=True)
