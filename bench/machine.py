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


# Float32 FMA pipes per core of the CPU families whose optimisation guides
# we read: AMD family 19h (Zen 3 and 4: two 256-bit FMA pipes, AVX-512
# split over them on Zen 4) and Intel server cores since Skylake-SP (two
# FMA ports, 512-bit where avx512f is listed; one on some lower SKUs).
FMA_PIPES = 2


def float32_peak():
    """(GFLOP/s, how): every core's float32 peak, cores x FMA pipes x lanes
    (8 for AVX2, 16 for AVX-512) x 2 (multiply and add) x the clock
    /proc/cpuinfo reports; None where it lists no FMA or no clock."""
    if not os.path.exists('/proc/cpuinfo'):
        return None, 'no /proc/cpuinfo'
    with open('/proc/cpuinfo') as f:
        text = f.read()
    flags = next((line.split(':', 1)[1].split() for line in text.splitlines()
                  if line.startswith('flags')), [])
    clocks = [float(line.split(':', 1)[1]) for line in text.splitlines()
              if line.startswith('cpu MHz')]
    if 'fma' not in flags or not clocks:
        return None, 'no FMA or no clock listed in /proc/cpuinfo'
    lanes = 16 if 'avx512f' in flags else 8
    ghz = max(clocks) / 1000
    cores = os.cpu_count()
    peak = cores * FMA_PIPES * lanes * 2 * ghz
    return peak, (f"{cores} cores x {FMA_PIPES} FMA pipes x {lanes} float32 lanes "
                  f"({'AVX-512' if lanes == 16 else 'AVX2'}) x 2 x {ghz:.2f} GHz "
                  f"(/proc/cpuinfo) = {peak:.0f} GFLOP/s")
