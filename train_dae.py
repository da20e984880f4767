"""Train the denoising autoencoder (stage 2) on the frozen MTL's outputs.

    python train_dae.py [--set NAME=VALUE ...]

Needs the MTL weights from train_mtl.py (config.predCheckPointPath). The MTL
runs in inference mode inside the same replica step as the DAE, so its
forward pass is split across replicas too.
"""
import config
from nets import dae as dae_net, mtl as mtl_net
from utils import checkpoints, datasets, evaluation, losses, settings, training


def main():
    strategy = config.strategy
    datasets.check_training_splits()   # bad data fails before any step
    with strategy.scope():
        mtl = mtl_net.build_from_config(pretrained=False)
        checkpoints.load_weights(mtl, config.predCheckPointPath, 'mtl')
        mtl.trainable = False
        dae = dae_net.build_from_config()

    trainer = training.Trainer('dae', dae, *losses.dae_step(mtl, dae),
                               lambda: evaluation.validate(mtl, dae),
                               config.corrCheckPointPath)
    trainer.fit()
    return trainer


if __name__ == '__main__':
    settings.parse_args(settings.parser(__doc__.splitlines()[0]))
    settings.run_main(main)
