"""The modules of the checkout first on sys.path, for benchmarks that
compare this code with an older checkout (--code)."""


def code_modules():
    """(layouts, cache, tasks): the dataset layouts (VAIHINGEN_AREAS,
    find_split), the module holding the training cache (_cache) and the
    tasks; utils/data, utils/train since utils/ was split into packages,
    utils/datasets, pipeline, tasks before."""
    try:
        from utils.data import layouts
        from utils.train import cache, tasks
    except ImportError:     # an older checkout
        from utils import datasets as layouts, pipeline as cache, tasks
    return layouts, cache, tasks
