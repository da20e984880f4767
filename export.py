"""Export trained networks for other tools: a SavedModel and an ONNX model with their model card.

    python export.py --out DIR [--correction] [--mtl-weights F] [--dae-weights F]
        [--model ITEM] [--gsd METRES] [--deepness [height,classes]] [--set NAME=VALUE ...]

From the MTL weights (predCheckPointPath), and with --correction the DAE's
(corrCheckPointPath) after them as one graph, in float32 whatever
mixed_precision trained them, writes into DIR:

    saved_model/      SavedModel, signature 'serving_default': image
                      [batch, rows, cols, bands] float32 scaled to [0, 1] ->
                      height [batch, rows, cols] metres, sem [..., classes]
                      class probabilities (and norm with norm_flag);
                      assets/model_card.json
    model.onnx        the same graph for ONNX Runtime (opset 17), the card
                      in its metadata under 'model_card'
    model_card.json   the card: dataset, classes and colours, band order,
                      image scale, ground sampling distance (--gsd), window
                      size and the multiple rows and cols must be of,
                      recommended stride and blending, output units
    model.stac.json   the card as a STAC Item with the Machine Learning Model
                      extension, its assets linking these files and the
                      weights copied beside it (predict.py --model runs it)
    mtl.weights.h5, dae.weights.h5 (with --correction), each with its .json
    model_deepness.onnx, model_deepness_classes.onnx (with --deepness: the
                      QGIS plugin Deepness's Regressor of the height and, for
                      weights with a semantics head, Segmentor of the classes;
                      NCHW tiles of the card's window, settings in their
                      metadata: README, Export)

rows and cols must be multiples of 32; windows of the card's size, blended
as its `windows` say, give the heights predict.py gives. The export is
checked before it is kept: the SavedModel, ONNX Runtime and the Deepness
models must give the Keras networks' heights (and classes) on two windows.

Example: python export.py --out exported/ --correction --set dataset_name=Vaihingen
"""
import os
import shutil
import sys
import time

import numpy as np

from utils import settings
from utils.errors import SettingError
from utils.model import weights

FILES = ('saved_model', 'model.onnx', 'model_card.json', 'model.stac.json')


def parse(argv=None):
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True, help='folder to write the export into')
    weights.add_options(p)
    p.add_argument('--gsd', type=float, default=None,
                   help='ground sampling distance of the training images in metres, '
                        'for the model card (default: not stated)')
    p.add_argument('--deepness', nargs='?', const='auto', metavar='MODELS',
                   help='also the QGIS Deepness models: height, classes (default: those '
                        'the weights have); needs --gsd')
    args = settings.parse_args(p, argv)
    if args.gsd is not None and not args.gsd > 0:
        raise SettingError(f"--gsd {args.gsd}: give the training images' pixel size in "
                           f"metres, e.g. --gsd 0.09")
    if args.deepness and args.gsd is None:
        raise SettingError("--deepness: give --gsd METRES, the training images' pixel size "
                           "(e.g. --gsd 0.09); Deepness resamples the layer to it")
    args.explicit = {pair.split('=', 1)[0].strip() for pair in args.set}
    return args


def main(argv=None):
    args = parse(argv)
    import keras
    import tensorflow as tf
    from utils.data.samples import image_channels
    from utils.model import networks
    from utils.predict import deepness, export, provenance, stac

    cfg = settings.current()    # config.py after --set; the weights' .json below
    mtl_file, dae_file = weights.from_options(args, cfg)
    cfg = weights.adopt(cfg, [mtl_file, dae_file], args.explicit)
    if args.deepness:       # the user's mistakes before any work
        kinds = deepness.kinds(args.deepness, cfg, mtl_file.path)
        tile = deepness.tile_size(cfg, mtl_file, args.explicit)
        factor = deepness.input_factor(cfg)
    # Mixed-precision weights are float32 variables: built in float32 they
    # load as they are and the graph computes in float32.
    cfg = cfg.replace(mixed_precision='float32')
    keras.mixed_precision.set_global_policy('float32')
    strategy = tf.distribute.get_strategy()
    mtl = networks.trained(mtl_file, cfg, strategy)
    dae = networks.trained(dae_file, cfg, strategy) if dae_file else None

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, '.export.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    # Done, failed or stopped by Ctrl-C: no temporary folder is left behind
    # (one a kill -9 left is removed above by the next run).
    try:
        card = export.model_card(cfg, contract=mtl_file.contract(cfg), correction=dae is not None,
                                 weights={'mtl': mtl_file.path,
                                          'dae': dae_file.path if dae_file else None},
                                 gsd=args.gsd, version=provenance.project_version())
        print(f"{card['network']} ({card['dataset']}, {image_channels(cfg)} bands, "
              f"outputs {', '.join(card['outputs'])}) -> {out}")
        print(f"writing saved_model/ and converting it to model.onnx (tf2onnx, opset "
              f"{export.OPSET}) ...")
        serve = export.convert(mtl, dae, cfg, card, tmp)

        # Before anything is replaced: both files give the networks' heights.
        windows = np.random.default_rng(0).random(
            (2, cfg.cropSize, cfg.cropSize, image_channels(cfg)), np.float32)
        maps = {k: v.numpy() for k, v in serve(tf.constant(windows)).items()}
        expected = maps['height']
        models = [m for m in (mtl, dae) if m is not None]
        tolerance = export.height_tolerance(models, np.abs(expected).max())
        loaded = tf.saved_model.load(os.path.join(tmp, 'saved_model'))
        got = {'saved_model/': loaded.signatures[export.SIGNATURE](
            **{export.INPUT: tf.constant(windows)})['height'].numpy(),
               'model.onnx': export.onnx_session(os.path.join(tmp, 'model.onnx')).run(
            ['height'], {export.INPUT: windows})[0]}
        export.check_onnx(os.path.join(tmp, 'model.onnx'),
                          expect={k: card[k] for k in ('network', 'dataset', 'classes')})
        worst = export.check({os.path.join(out, name): heights for name, heights in got.items()},
                             expected, tolerance)
        for name in got:
            print(f"  {name}: heights within {worst[os.path.join(out, name)]:.2g} m of the Keras "
                  f"networks' (tolerance {tolerance:.2g})")
        names = list(FILES)
        if args.deepness:
            paths = {kind: os.path.join(tmp, deepness.FILES[kind]) for kind in kinds}
            for kind, path in paths.items():
                deepness.write(os.path.join(tmp, 'model.onnx'), path, kind, card, tile=tile,
                               factor=factor, gsd=args.gsd)
            # fed as the plugin feeds them: the values the network takes, over factor
            worst = deepness.check(paths, windows / factor, maps, {
                'height': tolerance, 'classes': export.height_tolerance([mtl], 1.0)})
            for kind, difference in worst.items():
                print(f"  {deepness.FILES[kind]}: {kind} within {difference:.2g} of the Keras "
                      f"networks'")
            names += [deepness.FILES[kind] for kind in kinds]
        names += stac.copy_weights({stage: found for stage, found in
                                    (('mtl', mtl_file), ('dae', dae_file)) if found}, tmp, cfg)
        stac.write(os.path.join(tmp, stac.ITEM), stac.item(
            card, names, total_parameters=sum(m.count_params() for m in models),
            framework_version=tf.__version__, batch_size=cfg.test_batch_size,
            created=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())))
        for name in names:
            final = os.path.join(out, name)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(os.path.join(tmp, name), final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"done: {out}/{', '.join(names)}")
    return card


if __name__ == '__main__':
    sys.exit(settings.run_main(main))
