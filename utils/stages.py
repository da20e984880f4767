"""The two training stages, assembled from config.py: networks, loss, trainer.

Stage 'mtl' trains the multi-task network. Stage 'dae' trains the denoising
autoencoder on the outputs of the trained MTL, loaded and frozen; it runs in
inference mode inside the same replica step as the DAE. Either starts from
a trained weights file when mtl_init_weights / dae_init_weights names one
(fine-tuning, utils/checkpoints.init_weights). train_mtl.py,
train_dae.py, test_multi_gpu.py and the benchmarks all take their trainer
from here, so they train the same thing.
"""
import config
from nets import dae as dae_net, mtl as mtl_net
from utils import checkpoints, evaluation, losses, training
from utils.pipeline import STAGES


def trained_mtl(path=None):
    """The MTL with the weights of train_mtl.py (`path`, default
    predCheckPointPath), under config.strategy."""
    with config.strategy.scope():
        # The checkpoint replaces every weight: no backbone download.
        mtl = mtl_net.build_from_config(pretrained=False)
        checkpoints.load_weights(mtl, path or config.predCheckPointPath, 'mtl')
    return mtl


def trained_dae(path=None):
    """The DAE with the weights of train_dae.py (`path`, default
    corrCheckPointPath), under config.strategy."""
    with config.strategy.scope():
        dae = dae_net.build_from_config()
        checkpoints.load_weights(dae, path or config.corrCheckPointPath, 'dae')
    return dae


def make_trainer(stage, mtl=None, steps_only=False):
    """The Trainer of `stage` ('mtl' or 'dae') under config.strategy.

    For the DAE, `mtl` is the MTL it learns to correct (frozen here); by
    default the trained one (trained_mtl). steps_only: a trainer only
    train_step is called on (checks and benchmarks): no validation or
    best-weights file, and the DAE's default MTL keeps random weights.
    """
    if stage not in STAGES:
        raise ValueError(f"stage = {stage!r}: use 'mtl' or 'dae'")
    if stage == 'mtl':
        with config.strategy.scope():
            # Weights to start from replace the encoder's too: no ImageNet download.
            model = mtl = mtl_net.build_from_config(pretrained=config.mtl_init_weights is None)
            start = checkpoints.init_weights(mtl, 'mtl')
        dae, step = None, losses.mtl_step(mtl)
    else:
        if mtl is None and steps_only:
            with config.strategy.scope():
                mtl = mtl_net.build_from_config()
        elif mtl is None:
            mtl = trained_mtl()
        mtl.trainable = False
        with config.strategy.scope():
            model = dae = dae_net.build_from_config()
            start = checkpoints.init_weights(dae, 'dae')
        step = losses.dae_step(mtl, dae)
    if steps_only:
        trainer = training.Trainer(stage, model, *step, None, None)
    else:
        def validate():
            return evaluation.validate(mtl, dae, cfg=config, strategy=config.strategy)
        best = getattr(config, checkpoints.SETTING_OF_PATH[stage])
        trainer = training.Trainer(stage, model, *step, validate, best)
    if start:
        trainer.notes.append(('starts from', start))
    return trainer
