"""The images to predict: opened, and checked against what the network
expects, before the networks are built.

Every input is opened first; those that cannot be predicted (damaged, wrong
band count, no georeferencing, an address answering 404) are listed together
and skipped, the others predicted. An image whose band statistics are far
from the training images' gets a warning naming --bands and image_scale.
"""
import sys

from utils.errors import DatasetError, UserError, imagery_warning
from utils.geo.image import Image

# An input band is unlike the training images' when its mean is this many
# training spreads away, or its spread this many times larger or smaller.
FAR_SPREADS = 2.0
SPREAD_RATIO = 3.0


def check_statistics(image, contract):
    """Warn when the image's band statistics are far from the training
    images' (`contract`: the weights' input Contract, or None): a band order
    or scale unlike training's gives heights without meaning."""
    if contract is None or contract.band_mean is None or (stats := image.statistics()) is None:
        return
    mean, spread = stats
    far = [i for i, (m, s, tm, ts) in enumerate(zip(mean, spread, contract.band_mean,
                                                    contract.band_spread))
           if abs(m - tm) > FAR_SPREADS * ts or not 1 / SPREAD_RATIO < s / max(ts, 1e-9)
           < SPREAD_RATIO]
    if far:
        shown = ', '.join(f"band {image.bands[i] + 1}: mean {mean[i]:.3f} spread "
                          f"{spread[i]:.3f} (training {contract.band_mean[i]:.3f} / "
                          f"{contract.band_spread[i]:.3f})" for i in far)
        imagery_warning(f"{image.path}: scaled values unlike the training images' "
                        f"({shown}); check --bands (now "
                        f"{','.join(str(b + 1) for b in image.bands)}) and image_scale (now "
                        f"{image.scale!r}, span {image.span[1]:g})")


def readable(files, bands, channels, scale, ungeoreferenced=False):
    """(the files that open, read and are georeferenced (or `ungeoreferenced`
    allows them not to be), [(file, reason)] of the others, listed on stderr)."""
    problems = []
    for path in files:
        try:
            with Image(path, bands, channels, scale) as image:
                image.rows(0, 1)    # a file damaged from its first rows fails now
                grid = image.grid
                if (grid.crs is None or not grid.georeferenced) and not ungeoreferenced:
                    raise DatasetError(
                        f"{path}: no {'CRS' if grid.georeferenced else 'georeferencing'} "
                        f"found by GDAL (GeoTIFF tags, world file, .prj, .aux.xml). Fix: "
                        f"georeference it (gdal_edit.py -a_srs EPSG:n -a_ullr ...), or "
                        f"add --ungeoreferenced to predict it on its pixel grid.")
        except UserError as err:
            problems.append((path, ' '.join(str(err).splitlines())))
    if problems:
        print(f"{len(problems)} of {len(files)} input(s) cannot be predicted and are "
              f"skipped:", file=sys.stderr)
        for _, reason in problems:
            print(f"  {reason}", file=sys.stderr)
    skipped = dict(problems)
    return [f for f in files if f not in skipped], problems


def failed(problems):
    """The run's error for the inputs that could not be predicted."""
    return DatasetError(f"{len(problems)} input(s) skipped: " +
                        '; '.join(reason for _, reason in problems))
