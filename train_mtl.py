"""Train the multi-task network (stage 1) on config.dataset_name.

    python train_mtl.py [--set NAME=VALUE ...]

Runs on the strategy config.py builds: one device, all GPUs of a machine
(multi_gpu_enabled), or several machines (TF_CONFIG). Resumes an interrupted
run from its last checkpoint; keeps the best weights by validation metric
(without validation, train_valid_flag = False, the last weights).
"""
import sys

from utils import settings


def main():
    # Imported here, after the command line: a setting that breaks its rule
    # stops the script before TensorFlow loads; so does bad data, below.
    from utils import distribute
    from utils.data import checks, labels

    cfg = settings.current()    # config.py after --set, handed to everything below
    training_split = checks.check_training_splits(cfg)   # bad data fails before any step
    strategy = distribute.get_strategy(cfg)     # TensorFlow starts here
    from utils.train.loop import Loop
    from utils.train.tasks import MTLTask
    from utils.train.trainer import Trainer
    task = MTLTask(cfg, imagery=training_split.imagery())
    loop = Loop(Trainer(task, strategy))
    unlabelled = labels.describe_unlabelled(cfg, training_split)
    if unlabelled:
        task.notes.append(('unlabelled', unlabelled))
    loop.fit()
    return loop


if __name__ == '__main__':
    settings.parse_args(settings.parser(__doc__.splitlines()[0]))
    sys.exit(settings.run_main(main, tensorflow=False))   # started by get_strategy
