"""Fine-tune from saved weights and report the first step's loss against
independent references (run by test_finetune.py in its own process, since
devices are configured once).

    python tests/finetune_run.py OUT_DIR CASES [NAME=VALUE ...]

CASES: comma-separated, of mtl, mtl_changed, dae, dae_changed.

Saves an MTL and a DAE of six classes with utils/model/weights.save, then
for each case starts a trainer from them (mtl_init_weights,
dae_init_weights; 'changed': three classes) and takes one step on a fixed
batch. Prints one JSON line: per case the step's loss terms, the same terms
of the model as loaded from the file by Keras itself, and of a freshly
built one, each computed per replica share of the batch as the step splits
it (BatchNormalization takes each share's statistics).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from utils import settings  # noqa: E402

out, cases = sys.argv[1], sys.argv[2].split(',')
SIX = '[0, 1, 2, 3, 4, 5]'
THREE = '[0, 1, 2]'
# Dropout off: a training-mode forward pass then depends only on weights and batch.
BASE = ['cropSize=32', 'mtl_decoder_scale=0.0625', 'dae_width_scale=0.0625',
        'backbone_weights=None', 'dropout_rate=0', f'checkpoint_root={out}',
        f'label_codes={SIX}'] + sys.argv[3:]
settings.apply(BASE)

from utils import distribute  # noqa: E402
distribute.start_tensorflow()   # as the scripts start it
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import config  # noqa: E402
from stand_in import small_encoder  # noqa: E402
from utils.model import weights  # noqa: E402
from utils.model.networks import build_dae, build_mtl  # noqa: E402
from utils.train import benchmark, losses, tasks  # noqa: E402
from utils.train.trainer import Trainer  # noqa: E402


def per_share(terms_fn, batch, replicas):
    """Mean per-example loss terms over the batch, each replica's share
    through the model on its own (contiguous shares, as the step splits it)."""
    n = len(batch['image']) // replicas
    parts = [terms_fn({k: v[i * n:(i + 1) * n] for k, v in batch.items()})
             for i in range(replicas)]
    return {k: float(np.mean(np.concatenate([p[k].numpy() for p in parts])))
            for k in parts[0]}


def mtl_terms(model):
    def terms(batch):
        found = losses.mtl_terms(batch, model(batch['image'], training=True), config)
        return dict(found, loss=losses.mtl_total(found, config))
    return terms


def dae_terms(mtl, dae):
    def terms(batch):
        found = losses.dae_step(mtl, dae, config)[0](batch, training=True)
        return dict(found, loss=found['dsm'])
    return terms


def step(trainer, batch):
    dataset = tf.data.Dataset.from_tensors(batch)
    report, _ = trainer.train_step(iter(strategy.experimental_distribute_dataset(dataset)),
                                   steps=1)
    return report


strategy = distribute.get_strategy(config)
with small_encoder():
    replicas = strategy.num_replicas_in_sync
    saved = {}
    for kind in ('mtl', 'dae'):
        path = os.path.join(out, 'trained', f'{kind}.weights.h5')
        model = Trainer(benchmark.steps_only_task(kind, config), strategy).model
        # Unlike any fresh network: its height is off by metres.
        last = model.get_layer('height' if kind == 'mtl' else 'noise')
        last.bias.assign(last.bias + (7.0 if kind == 'mtl' else -3.0))
        weights.save(model, path, kind, config)
        saved[kind] = path
    results = {}
    for case, kind, codes in (('mtl', 'mtl', SIX), ('mtl_changed', 'mtl', THREE),
                              ('dae', 'dae', SIX), ('dae_changed', 'dae', THREE)):
        if case not in cases:
            continue
        settings.apply(BASE + [f'label_codes={codes}', f'{kind}_init_weights={saved[kind]}'])
        batch = benchmark.synthetic_batch(config.mtl_global_batch_size, config, seed=3)
        frozen = None
        if kind == 'mtl':
            trainer = Trainer(tasks.MTLTask(config), strategy)
            loaded = build_mtl(config, pretrained=False, num_classes=6)
            loaded.load_weights(saved['mtl'])
            fresh = build_mtl(config, pretrained=False)
            reference = {'loaded': per_share(mtl_terms(loaded), batch, replicas),
                         'fresh': per_share(mtl_terms(fresh), batch, replicas)}
        else:
            frozen = build_mtl(config, pretrained=False)
            trainer = Trainer(tasks.DAETask(config, mtl=frozen), strategy)
            if codes == SIX:
                loaded = build_dae(config)
                loaded.load_weights(saved['dae'])
            else:
                # The file's DAE read by Keras, every layer but the first moved
                # by name into one of three classes; the first convolution takes
                # the file's kernel for the height, normals and image channels
                # (1 + 6 + 3 + 3 of them in the file, 1 + 3 + 3 + 3 now) and the
                # trainer's own for the three new semantic ones.
                donor = build_dae(config, num_classes=6)
                donor.load_weights(saved['dae'])
                loaded = build_dae(config)
                for layer, twin in zip(loaded.layers, donor.layers):
                    if layer.name != 'enc1_conv1':
                        layer.set_weights(twin.get_weights())
                kernel, bias = donor.get_layer('enc1_conv1').get_weights()
                own = trainer.model.get_layer('enc1_conv1').get_weights()[0]
                kernel = np.concatenate([kernel[:, :, :1], own[:, :, 1:4], kernel[:, :, 7:]],
                                        axis=2)
                loaded.get_layer('enc1_conv1').set_weights([kernel, bias])
            fresh = build_dae(config)
            reference = {'loaded': per_share(dae_terms(frozen, loaded), batch, replicas),
                         'fresh': per_share(dae_terms(frozen, fresh), batch, replicas)}
        results[case] = dict(reference, first=step(trainer, batch), notes=trainer.task.notes,
                             replicas=replicas)
print(json.dumps(results))
