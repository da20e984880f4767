"""Train the multi-task network (stage 1) on config.dataset_name.

    python train_mtl.py [--set NAME=VALUE ...]

Runs on the strategy config.py builds: one device, all GPUs of a machine
(multi_gpu_enabled), or several machines (TF_CONFIG). Resumes an interrupted
run from its last checkpoint; keeps the best weights by validation metric.
"""
import config
from nets import mtl as mtl_net
from utils import datasets, evaluation, losses, settings, training


def main():
    strategy = config.strategy
    datasets.check_training_splits()   # bad data fails before any step
    with strategy.scope():
        model = mtl_net.build_from_config()

    trainer = training.Trainer('mtl', model, *losses.mtl_step(model),
                               lambda: evaluation.validate(model),
                               config.predCheckPointPath)
    trainer.fit()
    return trainer


if __name__ == '__main__':
    settings.parse_args(settings.parser(__doc__.splitlines()[0]))
    settings.run_main(main)
