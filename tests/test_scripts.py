"""The four user scripts end one way (utils/settings.run_main and parse_args):
exit 1 and one line `error: ...` on stderr for the user's mistakes, 2 for a
malformed command line, 130 on Ctrl-C; run as users run them."""
import pytest

from conftest import PREDICT_TINY, run_python
from utils import distribute, settings
from utils.errors import CheckpointError

SCRIPTS = ['train_mtl.py', 'train_dae.py', 'test_dsm.py', 'test_multi_gpu.py']


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert 'Traceback' not in result.stderr and lines, result.stderr[-2000:]
    return lines[-1]


@pytest.mark.parametrize('script', SCRIPTS)
@pytest.mark.parametrize('bad,message', [
    ('steps_per_execution=0', 'steps_per_execution = 0: use a whole number >= 1'),
    ('reg_loss=mae', "reg_loss = 'mae': use 'mse' or 'huber'"),
])
def test_a_setting_that_breaks_its_rule_exits_1(script, bad, message):
    result = run_python([script, '--set', bad], timeout=300)
    assert result.returncode == 1
    assert result.stderr == f'error: {message}\n'


def run_without_tensorflow(script, *args):
    """Run `python script args...` and print its exit code and whether it
    imported TensorFlow."""
    code = ("import runpy, sys\n"
            f"sys.argv = [{script!r}, *{list(map(str, args))!r}]\n"
            "try:\n"
            f"    runpy.run_path({script!r}, run_name='__main__')\n"
            "except SystemExit as end:\n"
            "    print(end.code, 'tensorflow' in sys.modules)\n")
    return run_python(['-c', code], timeout=300)


@pytest.mark.parametrize('script', SCRIPTS)
def test_settings_are_checked_before_tensorflow_loads(script):
    result = run_without_tensorflow(script, '--set', 'cropSize=100')
    assert result.stdout.split() == ['1', 'False'], result.stderr[-2000:]
    assert result.stderr == 'error: cropSize = 100: use a multiple of 32 >= 32\n'


@pytest.mark.parametrize('script', SCRIPTS)
@pytest.mark.parametrize('args', [['--set', 'reg_los=mse'], ['--set', 'cropSize'],
                                  ['--set', 'mtl_lr=fast'], ['--no-such-option']])
def test_a_malformed_command_line_exits_2(script, args):
    result = run_python([script, *args], timeout=300)
    assert result.returncode == 2
    assert 'error: ' in one_error_line(result)


@pytest.mark.parametrize('script,args,error', [
    ('train_mtl.py', ['--set', 'dataset_name=Vaihingen', '--set', 'shortcut_path={tmp}'],
     'error: Dataset folder not found: {tmp}/Vaihingen '),
    ('train_dae.py', ['--set', 'predCheckPointPath={tmp}/mtl.weights.h5'],
     "error: predCheckPointPath = '{tmp}/mtl.weights.h5': no such file."),
    ('test_dsm.py', ['--correction', '--dae-weights', '{tmp}/dae.weights.h5',
                     '--mtl-weights', '{mtl}'],
     "error: --dae-weights = '{tmp}/dae.weights.h5': no such file."),
    ('predict.py', ['{tmp}'], 'error: {tmp}: no image in this folder that GDAL opens.'),
])
def test_data_and_weights_are_checked_before_tensorflow_starts(
        tmp_path, synthetic_root, weights, script, args, error):
    """A missing folder or weights file is reported in a fraction of a
    second, not after TensorFlow's start (about 5 s)."""
    fill = dict(tmp=tmp_path, mtl=weights['mtl'])
    sets = [f'--set={s}' for s in PREDICT_TINY + [f'shortcut_path={synthetic_root}',
                                                  f'checkpoint_root={tmp_path}']]
    result = run_without_tensorflow(script, *sets, *[a.format(**fill) for a in args])
    assert result.stdout.split() == ['1', 'False'], result.stderr[-2000:]
    assert one_error_line(result).startswith(error.format(**fill))


def test_run_main_convention(capsys):
    def fails(kind, message):
        raise kind(message)
    assert settings.run_main(lambda: None) == 0
    assert settings.run_main(fails, CheckpointError, 'no file x.h5\nput it there') == 1
    assert capsys.readouterr().err == 'error: no file x.h5 put it there\n'
    assert settings.run_main(fails, KeyboardInterrupt, '') == 130
    with pytest.raises(ZeroDivisionError):      # a bug keeps its traceback
        settings.run_main(fails, ZeroDivisionError, 'bug')
    with pytest.raises(SystemExit) as end:      # a script's own exit code passes through
        settings.run_main(fails, SystemExit, 3)
    assert end.value.code == 3


START_UP = [
    'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR',
    'I0000 00:00:1795966544.919266    6790 port.cc:153] oneDNN custom operations are on.',
    'W0000 00:00:1795966544.919805    6790 some.cc:31] a warning',
    'E0000 00:00:1795966851.925502    6790 cuda_platform.cc:52] failed call to cuInit: '
    'INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)',
    'E0000 00:00:1795966851.925502    6790 other.cc:52] another error',
    'error: ours, never hidden',
]


@pytest.mark.parametrize('level,shown', [
    ('0', START_UP), ('1', START_UP[2:3] + START_UP[4:]), ('2', START_UP[4:]),
    ('3', START_UP[5:]), ('bad', START_UP)])
def test_start_up_lines_are_hidden_by_tensorflow_s_own_levels(monkeypatch, level, shown):
    monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', level)
    assert [line for line in START_UP if not distribute._start_up_line(line)] == shown


@pytest.mark.parametrize('level', [None, '0'])
def test_tensorflow_start_up_lines_follow_tf_cpp_min_log_level(tmp_path, level):
    """Unset (2 here), the user sees our one line and nothing of TensorFlow's
    C++ start-up, not even 'failed call to cuInit' on this machine without a
    GPU; 0 shows everything."""
    import os
    import subprocess
    import sys
    from conftest import ROOT
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    if level is not None:
        env['TF_CPP_MIN_LOG_LEVEL'] = level
    # export.py starts TensorFlow before it reads its options (settings.run_main)
    missing = tmp_path / 'mtl.weights.h5'
    result = subprocess.run([sys.executable, 'export.py', '--out', str(tmp_path / 'out'),
                             '--mtl-weights', str(missing)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-1].startswith(f"error: --mtl-weights = '{missing}': no such file.")
    if level == '0':    # TensorFlow's info lines, as TensorFlow prints them
        assert any(line.startswith('I0000 ') for line in lines), lines
    else:
        assert len(lines) == 1, lines


@pytest.mark.slow
@pytest.mark.parametrize('command', [
    # settings.run_main starts TensorFlow before the script's main (the
    # read-only mode measures its reads in processes without it)
    ['bench/predict_large.py', '--read-only', '--size', '64', '--layouts', 'tiled'],
    # machine.describe(), the line every benchmark prints, starts it for a
    # script that has no run_main (here before prepare_dataset.py runs)
    ['bench/prepare_region.py', '--sides', '80', '--tile', '64', '--block', '1']])
def test_benchmarks_start_tensorflow_as_quietly_as_the_user_scripts(command):
    """The benchmarks' cheapest runs, typed without TF_CPP_MIN_LOG_LEVEL:
    their output, and nothing of TensorFlow's C++ start-up on stderr."""
    import os
    import subprocess
    import sys
    from conftest import ROOT
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    result = subprocess.run([sys.executable, *command], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'TensorFlow' in result.stdout          # the machine line: it was started
    assert result.stderr == ''
