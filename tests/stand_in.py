"""A small stand-in for DenseNet121, for tests of what sits around the
encoder (datasets, heads, decoder, resuming, distribution, scripts), where
building and tracing DenseNet's 120 layers only costs time: its first
training step takes about 11 s frozen and 35 s trained on one replica,
the stand-in's about 3 s (bench/RESULTS.md, The suite on the stand-in
encoder). It gives what the decoder expects of DenseNet121, 1024 channels
at 1/32 of the input, with a BatchNormalization inside. DenseNet121 itself
is built and counted in test_nets.py, exported in test_export.py, and
trained on one replica and on two (synchronised batch norm) in
test_performance.py.

    python tests/stand_in.py SCRIPT [ARGS ...]

runs SCRIPT as `python SCRIPT ARGS ...` would, with the MTL built on the
stand-in (and reads the weights such a run wrote); `-` runs standard input
as `python -` does, without the stand-in (no network there).
"""
import contextlib
import os
import runpy
import sys
from unittest import mock


def encoder(weights, freeze):
    import keras
    stand_in = keras.Sequential([keras.layers.Conv2D(1024, 32, strides=32),
                                 keras.layers.BatchNormalization()])
    stand_in.trainable = not freeze     # as mtl_bb_freeze freezes DenseNet121
    return stand_in


@contextlib.contextmanager
def small_encoder():
    """Inside the block the MTL is built on the stand-in."""
    from nets import mtl
    with mock.patch.object(mtl, '_encoder', encoder):
        yield


if __name__ == '__main__':
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    if script == '-':   # run_train_test.sh's summary
        exec(compile(sys.stdin.read(), '<stdin>', 'exec'), {'__name__': '__main__'})
        sys.exit()
    # As `python SCRIPT` sets it up: the script's folder first on the path.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    from utils import distribute
    distribute.start_tensorflow()   # as quietly as the script would
    with small_encoder():
        runpy.run_path(script, run_name='__main__')
