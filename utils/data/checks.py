"""The checks before training: every file of the splits training reads
loads, fits the crop and has heights, and the statistics of its images."""
from typing import NamedTuple

import numpy as np

from utils.data.labels import unlabelled_index
from utils.data.layouts import find_split, layout_error
from utils.data.samples import NODATA_BELOW, load_sample
from utils.errors import DatasetError
from utils.geo.grid import check_crop_fits
from utils.geo.image import BandStatistics


class SplitSummary(NamedTuple):
    pixels: int         # label pixels of a split
    unlabelled: int     # of them, those holding unlabelled_code
    band_mean: list     # per image band, over the valid pixels, in [0, 1] units
    band_spread: list

    def imagery(self):
        """The band statistics recorded beside the best weights."""
        return dict(band_mean=self.band_mean, band_spread=self.band_spread)


def check_training_splits(cfg):
    """check_split on every split training reads: train, and valid unless it
    is merged into train (train_valid_flag = False). Returns the SplitSummary
    of the split training learns from (its band statistics go beside the
    best weights: Task.imagery)."""
    summaries = {split: check_split(cfg, find_split(cfg, split))
                 for split in (('train', 'valid') if cfg.train_valid_flag else ('train',))}
    return summaries['train']


def check_split(cfg, samples):
    """Load every sample and raise DatasetError on anything training would trip over.

    Besides what load_sample checks (readable files, sizes, label values):
    every image at least cfg.cropSize on both sides, and not all heights nodata.
    Returns its SplitSummary.
    """
    if not samples:
        raise layout_error(cfg, "The split has no samples.")
    pixels = unlabelled = 0
    bands = None
    for sample in samples:
        loaded = load_sample(cfg, sample)
        check_crop_fits(sample.image, loaded.height.shape, cfg.cropSize)
        if loaded.labels is not None:
            pixels += loaded.labels.size
            unlabelled += int(np.count_nonzero(loaded.labels == unlabelled_index(cfg)))
        valid = np.isfinite(loaded.height)
        if not valid.any():
            files = sample.height + (f" and {sample.dem}" if sample.dem else '')
            raise DatasetError(f"{files}: every height is nodata (NaN, GDAL nodata or "
                               f"< {NODATA_BELOW:g}). Fix: replace the file or remove the sample.")
        bands = bands or BandStatistics(loaded.image.shape[-1])
        bands.add(loaded.image[valid])
    mean, spread = bands.mean_spread()
    return SplitSummary(pixels, unlabelled, mean.tolist(), spread.tolist())
