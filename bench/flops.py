"""Floating-point operations per training sample of the published networks,
counted by TensorFlow's graph profiler (multiply and add counted as 2) on
the traced graphs, not estimated.

    python bench/flops.py [--crop 320] [--classes 6] [--json]

MTL: 'dsm' head mode, semantics + normals, decoder scale 1.0 (the paper).
DAE: width 1.0, input [height, 6-class softmax, normals, RGB]. For each:
the forward pass (inference), and a training step's forward + backward
(the gradient graph for the trainable weights). Training the DAE also runs
the frozen MTL forward on every sample, reported as its own line.
Convolutions, matrix products and element-wise arithmetic are counted;
batch normalisation and ReLU are not (TensorFlow registers no count for
them; they are under 1% of the convolutions here).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils import settings  # noqa: E402


def graph_flops(fn, spec):
    """Float operations of the graph that tf.function traces for `spec`."""
    import tensorflow as tf
    graph = tf.function(fn).get_concrete_function(spec).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options['output'] = 'none'
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def forward_and_training(model, spec):
    """(forward FLOPs, forward + backward FLOPs) for one sample."""
    import tensorflow as tf

    def forward(x):
        return model(x, training=False)

    def train(x):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            outs = out.values() if isinstance(out, dict) else [out]
            loss = tf.add_n([tf.reduce_sum(o) for o in outs])
        return tape.gradient(loss, model.trainable_variables)

    return graph_flops(forward, spec), graph_flops(train, spec)


def main():
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('--crop', type=int, default=320, help='crop side, px')
    p.add_argument('--classes', type=int, default=6, help='semantic classes (Vaihingen: 6)')
    p.add_argument('--json', action='store_true', help='print one JSON object')
    args = settings.parse_args(p)
    import tensorflow as tf
    from nets import dae as dae_net, mtl as mtl_net
    tf.get_logger().setLevel('ERROR')   # the v1 profiler's deprecation notices

    mtl = mtl_net.build_mtl(args.classes, sem=True, norm=True, edge=False, head_mode='dsm',
                            decoder_scale=1.0, backbone_weights=None, dropout=0.5)
    channels = dae_net.input_channels(args.classes, sem=True, norm=True)
    dae = dae_net.build_dae(channels, width_scale=1.0, dropout=0.5)
    image = tf.TensorSpec([1, args.crop, args.crop, 3], tf.float32)
    mtl_fwd, mtl_train = forward_and_training(mtl, image)
    dae_fwd, dae_train = forward_and_training(
        dae, tf.TensorSpec([1, args.crop, args.crop, channels], tf.float32))
    result = {
        'crop': args.crop, 'classes': args.classes,
        'mtl_parameters': mtl.count_params(), 'dae_parameters': dae.count_params(),
        'mtl_forward_gflop': mtl_fwd / 1e9, 'mtl_training_gflop': mtl_train / 1e9,
        'mtl_training_over_forward': mtl_train / mtl_fwd,
        'dae_forward_gflop': dae_fwd / 1e9, 'dae_training_gflop': dae_train / 1e9,
        'dae_training_over_forward': dae_train / dae_fwd,
        'dae_stage_training_gflop': (dae_train + mtl_fwd) / 1e9,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"per sample at {args.crop} x {args.crop} px, GFLOP (multiply-add = 2):")
    print(f"MTL ({result['mtl_parameters'] / 1e6:.1f} M parameters): forward "
          f"{result['mtl_forward_gflop']:.1f}, training step {result['mtl_training_gflop']:.1f} "
          f"({result['mtl_training_over_forward']:.2f}x forward)")
    print(f"DAE ({result['dae_parameters'] / 1e6:.1f} M parameters): forward "
          f"{result['dae_forward_gflop']:.1f}, training step {result['dae_training_gflop']:.1f} "
          f"({result['dae_training_over_forward']:.2f}x forward)")
    print(f"DAE stage training step (frozen MTL forward + DAE training): "
          f"{result['dae_stage_training_gflop']:.1f}")


if __name__ == '__main__':
    sys.exit(settings.run_main(main))
