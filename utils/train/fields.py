"""A training sample's fields: the image, the mask of valid heights, and
the target of every head switched on (utils/model/heads.py), at full size.

    'image'  [H,W,C] float32 in [0,1]           (C = 4 with sar_mode, else 3)
    'mask'   [H,W,1] float32, 1 where the height is valid
    'height' [H,W,1] float32, 0 where nodata
    'sem'    [H,W]   int32 class indices        (sem_flag; one-hot in the loss)
    'norm'   [H,W,3] float32 (n+1)/2            (norm_flag; x255 without normalize_flag)
    'edge'   [H,W,1] float32 in {0,1}           (edge_flag)

The targets are made over the whole tile or patch (normals and edges by
utils/data/targets.py, which fills nodata before filtering) and cropped
with the rest, so a crop's border pixels see their real neighbours.
"""
import numpy as np
import tensorflow as tf

from utils.data.samples import image_channels, load_sample
from utils.errors import DatasetError
from utils.geo.grid import check_crop_fits
from utils.model import heads


def field_specs(cfg):
    """(name, dtype, channels) of every element field, in a fixed order."""
    return [('image', tf.float32, image_channels(cfg)), ('mask', tf.float32, 1)] + [
        (h.name, tf.as_dtype(h.dtype), h.field_channels) for h in heads.from_config(cfg)]


def iter_fields(loaded, cfg):
    """Every field of one loaded sample at full size, one after the other:
    (name, [H, W, ch] array). A caller that packs or drops each before asking
    for the next never holds all of a full-size tile's float32 fields at once."""
    loaded = loaded._replace(image=np.asarray(loaded.image, np.float32),
                             height=np.asarray(loaded.height, np.float32))
    yield 'image', loaded.image
    yield 'mask', np.isfinite(loaded.height).astype(np.float32)[..., None]
    for head in heads.from_config(cfg):
        yield head.name, np.asarray(head.target(loaded, cfg), head.dtype)


def make_fields(loaded, cfg):
    """Every field of one loaded sample at full size: name -> [H, W, ch] array."""
    return dict(iter_fields(loaded, cfg))


def drop_index_channel(fields, cfg):
    """Class-index targets lose their channel axis, as the losses take them."""
    for head in heads.from_config(cfg):
        if head.dtype == 'int32' and head.name in fields:
            fields[head.name] = fields[head.name][..., 0]
    return fields


def checked_fields(sample, cfg):
    """iter_fields of one sample, each field checked as it comes."""
    loaded = load_sample(cfg, sample)
    shape = np.shape(loaded.image)[:2]
    check_crop_fits(sample.image, shape, cfg.cropSize)
    channels = {name: count for name, _, count in field_specs(cfg)}
    fields = iter_fields(loaded, cfg)
    del loaded
    while True:
        try:
            name, array = next(fields)
        except StopIteration:
            return
        except DatasetError as err:   # a target the sample lacks: name its file
            raise DatasetError(f"{sample.image}: {err}") from None
        if array.shape != shape + (channels[name],):
            raise DatasetError(
                f"{sample.image}: {name} of {sample.name} has shape {array.shape}, expected "
                f"{shape + (channels[name],)}: fix the files of this sample")
        if not np.isfinite(array).all():
            raise DatasetError(
                f"{sample.image}: {name} of {sample.name} holds NaN or infinite values; "
                f"fix the file (nodata heights are fine, they are masked)")
        yield name, array


def decode(sample, cfg):
    """Every field of one sample at full size: name -> [H, W, ch] array."""
    return dict(checked_fields(sample, cfg))
