"""Images claimed one at a time by the processes sharing an output folder
(the TF_CONFIG workers of a prediction run), so that each is predicted once."""
import contextlib
import os
import socket


class Claim:
    """An image claimed by this process: `<out>/<name>.lock`, created
    atomically (O_EXCL), so that of several workers sharing the output
    folder exactly one predicts each image. A lock whose process is gone
    (same host, pid not running) is taken over."""

    def __init__(self, out_dir, name):
        self.path = os.path.join(out_dir, f'{name}.lock')
        self.owner = f"{socket.gethostname()} {os.getpid()}"
        self.held = False

    def take(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._abandoned():
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, 'w') as f:
                f.write(self.owner + '\n')
            self.held = True
            return True
        return False

    def holder(self):
        try:
            with open(self.path) as f:
                return f.read().strip()
        except OSError:
            return ''

    def _abandoned(self):
        host, _, pid = self.holder().partition(' ')
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self):
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            self.held = False
