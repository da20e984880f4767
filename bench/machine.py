"""One line describing the machine a benchmark ran on, for bench/RESULTS.md."""
import datetime
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def describe():
    """Cores, CPU model, memory, Python and TensorFlow versions, load, date."""
    model = platform.processor() or platform.machine()
    if os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            model = next((line.split(':', 1)[1].strip() for line in f
                          if line.startswith('model name')), model)
    memory = ''
    if os.path.exists('/proc/meminfo'):
        with open('/proc/meminfo') as f:
            memory = f"{int(f.readline().split()[1]) / 2 ** 20:.0f} GiB RAM, "
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from utils import distribute
    distribute.start_tensorflow()   # quietly, as the user scripts (a no-op once started)
    import tensorflow as tf
    load = ' '.join(f'{x:.2f}' for x in os.getloadavg())
    return (f"nproc {os.cpu_count()}, CPU {model}, {memory}Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}, load average "
            f"{load}, {datetime.datetime.now():%Y-%m-%d %H:%M}")
