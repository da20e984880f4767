"""The project's import structure, read from the source: no import circle
among our modules (imports inside functions included), below the scripts
only the modules the README names read config.py, no script imports
another, and the scripts and the trainer stay short drivers; pyflakes
reads every file, config.py's rules included, without a report."""
import ast
import glob
import io
import os
import re

from pyflakes import api, reporter

from conftest import ROOT

PACKAGES = ('utils', 'nets')


def our_modules():
    """{module name: path} of the scripts, config.py and the packages."""
    paths = glob.glob(os.path.join(ROOT, '*.py'))
    for package in PACKAGES:
        paths += glob.glob(os.path.join(ROOT, package, '**', '*.py'), recursive=True)
    modules = {}
    for path in paths:
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        if not name.endswith('__init__'):
            modules[name] = path
    return modules


def imports(path, known):
    """Our modules `path` imports anywhere in it (module level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from utils.data import layouts` imports utils.data.layouts
            names = [f'{node.module}.{a.name}' for a in node.names] + [node.module]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def graph():
    modules = our_modules()
    return {name: imports(path, modules) for name, path in modules.items()}


def cycle(edges):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(node, stack):
        state[node] = 'open'
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 'done'
        return None
    for start in sorted(edges):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    (tmp_path / 'a.py').write_text('import b\n')
    (tmp_path / 'b.py').write_text('def f():\n    from c import x\n')
    (tmp_path / 'c.py').write_text('import a\n')
    known = {'a', 'b', 'c'}
    edges = {m: imports(str(tmp_path / f'{m}.py'), known) for m in known}
    assert edges == {'a': {'b'}, 'b': {'c'}, 'c': {'a'}}
    assert cycle(edges) == ['a', 'b', 'c', 'a']
    edges['c'] = set()
    assert cycle(edges) is None


def test_no_import_circle_among_our_modules():
    edges = graph()
    assert 'utils.distribute' in edges['config']     # config.py does build the strategy
    assert cycle(edges) is None, ' -> '.join(cycle(edges))


def readers_in_readme():
    """The modules README.md's 'Who reads config.py' table names."""
    text = open(os.path.join(ROOT, 'README.md')).read()
    section = text.split('### Who reads config.py', 1)[1].split('\n#', 1)[0]
    return {m.replace('/', '.')[:-3] for m in re.findall(r'^\| `([\w/]+\.py)`', section, re.M)}


def test_below_the_scripts_only_the_modules_the_readme_names_read_config():
    edges = graph()
    readers = {m for m, targets in edges.items()
               if m.split('.')[0] in PACKAGES and 'config' in targets}
    assert readers == readers_in_readme()
    # Every room below the scripts takes its settings as an argument; only
    # the command line of config.py reads it.
    assert readers == {'utils.settings'}
    assert not any(t.startswith('utils.data') for m in ('nets.mtl', 'nets.dae')
                   for t in edges[m])


# utils/'s stages, each importing only those before it (README, Repository).
STAGES = ('geo', 'data', 'model', 'predict', 'evaluate', 'train', 'gis')


def test_each_stage_of_utils_uses_only_the_stages_before_it():
    edges = graph()
    stages = {m.split('.')[1] for m in edges if m.count('.') == 2 and m.startswith('utils.')}
    assert stages == set(STAGES)
    upward = [(m, t) for m, targets in edges.items() if m.count('.') == 2
              and m.startswith('utils.') for t in targets
              if t.count('.') == 2 and t.startswith('utils.')
              and STAGES.index(t.split('.')[1]) > STAGES.index(m.split('.')[1])]
    assert upward == []


SCRIPTS = ('train_mtl', 'train_dae', 'test_dsm', 'test_multi_gpu', 'predict', 'export',
           'buildings', 'prepare_dataset')
MOST_LINES = 200    # a driver tells one job's story; the rooms below hold the rest


def test_the_scripts_are_short_drivers_that_import_no_other_script():
    edges = graph()
    assert set(SCRIPTS) == {m for m in edges if '.' not in m} - {'config'}
    for script in SCRIPTS:
        lines = len(open(os.path.join(ROOT, f'{script}.py')).read().splitlines())
        assert lines <= MOST_LINES, f"{script}.py has {lines} lines"
        assert not edges[script] & set(SCRIPTS), f"{script}.py imports another script"


def _class_lines(path, name):
    tree = ast.parse(open(path).read())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    return node.end_lineno - node.lineno + 1


def test_the_trainer_is_the_steps_only():
    """Trainer owns strategy.run and its steps; the epochs are the Loop's."""
    path = os.path.join(ROOT, 'utils', 'train', 'trainer.py')
    assert _class_lines(path, 'Trainer') <= MOST_LINES
    assert 'strategy.run' in open(path).read()
    assert 'strategy.run' not in open(os.path.join(ROOT, 'utils', 'train', 'loop.py')).read()


def pyflakes_reports(paths):
    """pyflakes' report lines on the files and folders `paths`."""
    out, err = io.StringIO(), io.StringIO()
    api.checkRecursive(paths, reporter.Reporter(out, err))
    return (out.getvalue() + err.getvalue()).splitlines()


def test_pyflakes_finds_an_undefined_name(tmp_path):
    (tmp_path / 'a.py').write_text("x: one_of('auto') = 'auto'\n")
    assert [line.split(': ', 1)[1] for line in pyflakes_reports([str(tmp_path)])] == [
        "undefined name 'one_of'", "undefined name 'auto'"]


def test_pyflakes_reports_nothing():
    paths = glob.glob(os.path.join(ROOT, '*.py')) + \
        [os.path.join(ROOT, folder) for folder in (*PACKAGES, 'tests', 'bench')]
    assert pyflakes_reports(paths) == []
