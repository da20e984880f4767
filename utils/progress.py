"""Progress of long loops, readable on a terminal and in a log file."""
import sys
import time


class Progress:
    """Keras' progress bar on a terminal; elsewhere (a log file, CI) a plain
    line every tenth of the loop, since the bar's redraws pile up on one line."""

    def __init__(self, total, write=print, unit='step', stateful=('samples/s',)):
        import keras    # here: Bar below serves scripts that never load TensorFlow
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


class Bar:
    """A progress line for loops outside training (no Keras, so scripts that
    need no TensorFlow do not load it): redrawn in place on a terminal, a
    plain line every tenth of the loop elsewhere."""

    def __init__(self, total, what, unit):
        self.total, self.what, self.unit = total, what, unit
        self.every = max(1, total // 10)
        self.start = time.perf_counter()
        self.tty = sys.stdout.isatty()

    def update(self, done, note=''):
        if not self.tty and done % self.every and done != self.total:
            return
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate else 0.0
        width = 30
        filled = width * done // max(self.total, 1)
        line = (f"{self.what:<8}[{'=' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                f"{self.unit}  {rate:.1f}/s  ETA {eta:.0f} s  {note}").rstrip()
        if self.tty:
            end = '\n' if done == self.total else ''
            print('\r' + line, end=end, flush=True)
        else:
            print(line, flush=True)
