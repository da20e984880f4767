"""Does it matter for heights that we decode JPEG-in-TIFF orthophotos
differently from GDAL?

    python bench/jpeg_decoding.py [--quality 75] [--set NAME=VALUE ...]

GDAL writes RGB JPEG tiles as YCbCr with 4:2:0 chroma subsampling and
decodes them with libjpeg's plain (replicating) chroma upsampling; tifffile
/ imagecodecs, like OpenCV, use libjpeg's default smooth ("fancy")
upsampling. The luma is the same; the colours differ at colour edges.

For every test image of the dataset (default: the built-in synthetic one,
with the weights the main job trained, predCheckPointPath) the benchmark
writes the image with GDAL (rasterio) as a JPEG-compressed YCbCr GeoTIFF,
decodes it both ways, predicts heights from each with test_dsm.py's
sliding windows, and reports over all valid pixels: the input differences
(grey levels), the RMSE of each against the true heights, the RMSE of the
lossless original, and the RMS difference between the two decodings'
heights. Last line: `height RMS difference / RMSE: <ratio>`.
"""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import rasterio  # noqa: E402

import config  # noqa: E402
import machine  # noqa: E402
from utils import settings  # noqa: E402


def main():
    p = settings.parser(__doc__.split('\n\n')[0])
    p.add_argument('--quality', type=int, default=75, help='GDAL JPEG_QUALITY (default 75)')
    args = settings.parse_args(p)
    from utils import datasets, distribute, inference, raster, tasks
    strategy = distribute.get_strategy(config)
    mtl = tasks.trained_mtl(config, strategy)
    predict_fn = inference.make_predict_fn(mtl, cfg=config, strategy=strategy)
    errors = {'lossless': [], 'ours': [], 'gdal': []}
    height_diff, input_diff = [], []
    with tempfile.TemporaryDirectory() as folder:
        for sample in datasets.find_split('test'):
            original, truth = datasets.read_image(sample.image), \
                datasets.read_height(sample.height)
            path = os.path.join(folder, 'jpeg.tif')
            h, w = original.shape[:2]
            with rasterio.open(path, 'w', driver='GTiff', height=h, width=w, count=3,
                               transform=rasterio.transform.from_origin(0, h, 1, 1),
                               dtype='uint8', compress='JPEG', photometric='YCBCR',
                               jpeg_quality=args.quality, tiled=True,
                               blockxsize=256, blockysize=256) as out:
                out.write(np.rint(original * 255).astype(np.uint8).transpose(2, 0, 1))
            with rasterio.open(path) as source:
                gdal = source.read().transpose(1, 2, 0) / np.float32(255)
            with raster.Image(path, [0, 1, 2], 3, config.image_scale) as image:
                ours = image.read()[0]
            input_diff.append(np.abs(ours - gdal).ravel() * 255)
            valid = np.isfinite(truth)
            heights = {}
            for name, pixels in (('lossless', original), ('ours', ours), ('gdal', gdal)):
                heights[name] = inference.predict_tile(predict_fn, pixels, config.cropSize,
                                                       config.test_stride)['height']
                errors[name].append((heights[name] - truth)[valid])
            height_diff.append((heights['ours'] - heights['gdal'])[valid])
    inputs = np.concatenate(input_diff)
    rmse = {k: float(np.sqrt(np.mean(np.square(np.concatenate(v))))) for k, v in
            errors.items()}
    diff = float(np.sqrt(np.mean(np.square(np.concatenate(height_diff)))))
    print(machine.describe())
    print(f"dataset {config.dataset_name}, {len(input_diff)} test images, crop "
          f"{config.cropSize}, stride {config.test_stride}, JPEG quality {args.quality}")
    print(f"input, ours vs GDAL: max {inputs.max():.0f} grey levels, "
          f"{np.mean(inputs > 0.5) * 100:.1f}% of values differ, "
          f"{np.mean(inputs > 2.5) * 100:.1f}% by more than 2")
    print(f"height RMSE: lossless {rmse['lossless']:.4f}, JPEG decoded by us "
          f"{rmse['ours']:.4f}, by GDAL {rmse['gdal']:.4f}")
    print(f"height RMS difference, ours vs GDAL: {diff:.4f}")
    print(f"height RMS difference / RMSE: {diff / rmse['gdal']:.4f}")


if __name__ == '__main__':
    sys.exit(settings.run_main(main))
