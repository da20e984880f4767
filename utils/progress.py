"""Progress of long loops, readable on a terminal and in a log file."""
import sys

import keras


class Progress:
    """Keras' progress bar on a terminal; elsewhere (a log file, CI) a plain
    line every tenth of the loop, since the bar's redraws pile up on one line."""

    def __init__(self, total, write=print, unit='step', stateful=('samples/s',)):
        self.total, self.write, self.unit = total, write, unit
        self.every = max(1, total // 10)
        self.shown = 0
        self.bar = keras.utils.Progbar(total, stateful_metrics=list(stateful),
                                       unit_name=unit) if sys.stdout.isatty() else None

    def update(self, done, values):
        if self.bar:
            self.bar.update(done, [(k, v) for k, v in values.items() if v is not None])
        elif done // self.every > self.shown // self.every or done == self.total:
            self.shown = done
            self.write(f"  {self.unit} {done}/{self.total}  " + '  '.join(
                f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}"
                for k, v in values.items()))
