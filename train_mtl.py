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
    # stops the script before TensorFlow loads.
    from utils import datasets, distribute, tasks, training

    cfg = settings.current()    # config.py after --set, handed to everything below
    labels = datasets.check_training_splits(cfg)   # bad data fails before any step
    strategy = distribute.get_strategy(cfg)
    trainer = training.Trainer(tasks.MTLTask(cfg, imagery=labels.imagery()), strategy)
    unlabelled = datasets.describe_unlabelled(cfg, labels)
    if unlabelled:
        trainer.notes.append(('unlabelled', unlabelled))
    trainer.fit()
    return trainer


if __name__ == '__main__':
    settings.parse_args(settings.parser(__doc__.splitlines()[0]))
    sys.exit(settings.run_main(main))
