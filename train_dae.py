"""Train the denoising autoencoder (stage 2) on the frozen MTL's outputs.

    python train_dae.py [--set NAME=VALUE ...]

Needs the MTL weights from train_mtl.py (config.predCheckPointPath). The MTL
runs in inference mode inside the same replica step as the DAE, so its
forward pass is split across replicas too.
"""
import sys

from utils import settings


def main():
    # Imported here, after the command line: a setting that breaks its rule
    # stops the script before TensorFlow loads; so does bad data, below.
    from utils import distribute
    from utils.data import checks
    from utils.model.weights import WeightsFile

    cfg = settings.current()    # config.py after --set, handed to everything below
    training_split = checks.check_training_splits(cfg)   # bad data fails before any step
    WeightsFile(cfg.predCheckPointPath, 'mtl').check(cfg)   # the MTL it learns to correct
    strategy = distribute.get_strategy(cfg)     # TensorFlow starts here
    from utils.train.loop import Loop
    from utils.train.tasks import DAETask
    from utils.train.trainer import Trainer
    loop = Loop(Trainer(DAETask(cfg, imagery=training_split.imagery()), strategy))
    loop.fit()
    return loop


if __name__ == '__main__':
    settings.parse_args(settings.parser(__doc__.splitlines()[0]))
    sys.exit(settings.run_main(main, tensorflow=False))   # started by get_strategy
