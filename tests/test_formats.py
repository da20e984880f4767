"""Inputs in the formats orthophotos reach users in, written by GDAL
(rasterio), read by utils/geo and predicted by predict.py: JPEG 2000
(lossless), a VRT mosaic over 4 GeoTIFF tiles, PNG with a world file and
its CRS in .aux.xml, and a COG served with byte ranges by a loopback
server over HTTP and HTTPS (a self-signed certificate) and as an s3://
object of a loopback S3-compatible store. Each must give the
pixels, grid and heights of the same pixels as a plain GeoTIFF; bad inputs
(404, a server stopping mid-file, a VRT naming a missing tile, a JPEG 2000
without georeferencing, an untrusted certificate, a refused key) one line
each."""
import contextlib
import http.server
import os
import shutil
import ssl
import subprocess
import threading

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from tests.conftest import run_python
from tests.test_predict import _cli
from utils.data.samples import read_height
from utils.errors import DatasetError
from utils.geo.files import find_images, open_raster, unreadable
from utils.geo.image import Image
from utils.geo.read import read_raw

H, W = 64, 80
CRS = 'EPSG:32632'
TRANSFORM = from_origin(500000, 5000000, 0.5, 0.5)


def _pixels(height=H, width=W, seed=0):
    """[3, H, W] uint8, smooth with noise (the networks see structure)."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(height), np.arange(width)) * 1.5
    return ((ramp[None] + rng.integers(0, 40, (3, height, width))) % 256).astype(np.uint8)


def _write(path, bands, **profile):
    with rasterio.open(path, 'w', **dict(dict(driver='GTiff', height=bands.shape[1],
                                              width=bands.shape[2], count=len(bands),
                                              dtype=bands.dtype, crs=CRS,
                                              transform=TRANSFORM), **profile)) as out:
        out.write(bands)
    return str(path)


def _vrt(path, tiles):
    """A VRT mosaic as gdalbuildvrt writes it: one SimpleSource per tile and band."""
    t = TRANSFORM
    bands = []
    for band in (1, 2, 3):
        sources = ''.join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{os.path.basename(name)}'
            f'</SourceFilename><SourceBand>{band}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/></SimpleSource>'
            for name, (x, y, w, h) in tiles.items())
        bands.append(f'<VRTRasterBand dataType="Byte" band="{band}">{sources}</VRTRasterBand>')
    with rasterio.open(next(iter(tiles))) as first:
        wkt = first.crs.to_wkt()
    path.write_text(f'<VRTDataset rasterXSize="{W}" rasterYSize="{H}"><SRS>{wkt}</SRS>'
                    f'<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>'
                    + ''.join(bands) + '</VRTDataset>')
    return str(path)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """The plain GeoTIFF and the same pixels in each format, by name."""
    folder = tmp_path_factory.mktemp('formats')
    pixels = _pixels()
    out = {'plain': _write(folder / 'plain.tif', pixels)}
    out['jp2'] = _write(folder / 'ortho_jp2.jp2', pixels, driver='JP2OpenJPEG',
                        QUALITY=100, REVERSIBLE='YES')
    tiles = {}
    for i, (y, x) in enumerate([(0, 0), (0, W // 2), (H // 2, 0), (H // 2, W // 2)]):
        name = str(folder / f'tile_{i}.tif')
        with rasterio.open(name, 'w', driver='GTiff', height=H // 2, width=W // 2, count=3,
                           dtype='uint8', crs=CRS,
                           transform=TRANSFORM @ rasterio.Affine.translation(x, y)) as tile:
            tile.write(pixels[:, y:y + H // 2, x:x + W // 2])
        tiles[name] = (x, y, W // 2, H // 2)
    out['vrt'] = _vrt(folder / 'mosaic.vrt', tiles)
    out['png'] = _write(folder / 'ortho_png.png', pixels, driver='PNG', WORLDFILE='YES')
    out['cog'] = _write(folder / 'ortho_cog.tif', pixels, driver='COG', BLOCKSIZE=32)
    # a COG larger than GDAL's first request (16 kB): incompressible 256 px tiles
    big = np.random.default_rng(5).integers(0, 256, (3, 1024, 1024)).astype(np.uint8)
    out['big'] = _write(folder / 'big_cog.tif', big, driver='COG', BLOCKSIZE=256)
    return out


def test_the_formats_are_what_gdal_wrote(files):
    """The inputs are really JPEG 2000, a VRT, a PNG with its sidecars."""
    folder = os.path.dirname(files['plain'])
    with rasterio.open(files['jp2']) as src:
        assert src.driver == 'JP2OpenJPEG'
    with rasterio.open(files['vrt']) as src:
        assert src.driver == 'VRT' and len(src.files) == 5      # the VRT and 4 tiles
    assert os.path.exists(os.path.join(folder, 'ortho_png.wld'))
    assert os.path.exists(os.path.join(folder, 'ortho_png.png.aux.xml'))


@pytest.mark.parametrize('kind', ['jp2', 'vrt', 'png', 'cog'])
def test_each_format_reads_as_the_plain_geotiff(files, kind):
    with Image(files['plain'], [0, 1, 2], 3) as plain:
        want, want_valid = plain.read()
        grid = (plain.grid.crs, plain.grid.transform)
    with Image(files[kind], [0, 1, 2], 3) as image:
        got, valid = image.read()
        assert (image.grid.crs, image.grid.transform) == grid
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(valid, want_valid)
    assert grid == (rasterio.crs.CRS.from_string(CRS), TRANSFORM)


def test_a_folder_is_scanned_for_what_gdal_opens(files, tmp_path, capsys):
    """Every image, whatever its extension; no sidecar, no text file; the
    four tiles of the folder's VRT once, through the VRT, with a line saying
    so. A file named as an image is taken without opening it, so one GDAL
    cannot read is named when read, not left out unseen."""
    folder = os.path.dirname(files['plain'])
    with open(os.path.join(folder, 'notes.txt'), 'w') as f:
        f.write('not a raster')
    found = find_images([folder])
    assert sorted(map(os.path.basename, found)) == [
        'big_cog.tif', 'mosaic.vrt', 'ortho_cog.tif', 'ortho_jp2.jp2', 'ortho_png.png',
        'plain.tif']
    assert f"{files['vrt']}: 4 image(s) of its folder are its tiles" in capsys.readouterr().err
    # named one by one, the tiles are what the user asked for
    tiles = [os.path.join(folder, f'tile_{i}.tif') for i in range(4)]
    assert find_images(tiles) == tiles
    # a VRT GDAL cannot open keeps the tiles it names: both are reported when read
    damaged = tmp_path / 'damaged'
    damaged.mkdir()
    (damaged / 'mosaic.vrt').write_text('<VRTDataset rasterXSize="1"')
    shutil.copy(tiles[0], damaged / 'tile_0.tif')
    assert sorted(map(os.path.basename, find_images([damaged]))) == ['mosaic.vrt', 'tile_0.tif']
    shutil.copy(files['png'], tmp_path / 'image_without_extension')
    broken = tmp_path / 'broken.tif'
    broken.write_text('not a raster')
    assert find_images([tmp_path]) == [str(broken),
                                       str(tmp_path / 'image_without_extension')]
    with pytest.raises(DatasetError, match=f'Cannot read {broken} '):
        open_raster(broken)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Files of the server's folder with byte ranges (as object stores serve
    them); a path under /cut/ stops sending after the first CUT bytes of any
    range beyond them, as a server that drops the connection mid-file; one
    under /flaky/ answers the first request of each range 503 (an object
    store under load), and the next one."""
    CUT = 4096
    served = []     # (path, bytes sent)
    refused = set()     # (path, range) answered 503 once

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        cut = self.path.startswith('/cut/')
        if self.path.startswith('/flaky/'):
            request = (self.path, self.headers.get('Range', ''))
            if request not in self.refused:
                self.refused.add(request)
                self.send_error(503)
                return
        path = self.translate_path(self.path.replace('/cut/', '/', 1).replace('/flaky/', '/', 1))
        if not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        start, end = 0, size - 1
        ranged = self.headers.get('Range', '').startswith('bytes=')
        if ranged:
            first, _, last = self.headers['Range'][6:].split(',')[0].partition('-')
            start, end = int(first), min(int(last or size - 1), size - 1)
        self.send_response(206 if ranged else 200)
        self.send_header('Accept-Ranges', 'bytes')
        self.send_header('Content-Length', str(end - start + 1))
        if ranged:
            self.send_header('Content-Range', f'bytes {start}-{end}/{size}')
        self.end_headers()
        if head:
            return
        with open(path, 'rb') as f:
            f.seek(start)
            data = f.read(end - start + 1)
        if cut and start > 0:
            data = data[:len(data) // 2]
            self.close_connection = True
        self.served.append((self.path, len(data)))
        self.wfile.write(data)


@contextlib.contextmanager
def serving(handler_class, folder, tls=None):
    """127.0.0.1:<port> serving `folder` with `handler_class` in a thread
    (over TLS with `tls`, an ssl.SSLContext), stopped at the end."""
    handler = lambda *a, **k: handler_class(*a, directory=folder, **k)   # noqa: E731
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'127.0.0.1:{httpd.server_address[1]}'
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(scope='module')
def server(files):
    """http://127.0.0.1:<port>/ over the files' folder."""
    with serving(RangeHandler, os.path.dirname(files['plain'])) as address:
        yield f'http://{address}'


def test_a_cog_over_http_reads_as_the_plain_geotiff(files, server):
    with Image(files['plain'], [0, 1, 2], 3) as plain:
        want = plain.read()
    with Image(f'{server}/ortho_cog.tif', [0, 1, 2], 3) as image:
        got = image.read()
        assert image.grid.transform == TRANSFORM and \
            image.grid.crs == rasterio.crs.CRS.from_string(CRS)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_a_remote_cog_is_read_by_ranges_not_whole(server, files):
    """A window of rows of a large COG costs its tiles, not the file."""
    path = files['big']
    with rasterio.open(path) as src:
        big = src.read()
    RangeHandler.served.clear()
    with Image(f'{server}/big_cog.tif', [0, 1, 2], 3) as image:
        rows, _ = image.rows(0, 100)
    np.testing.assert_array_equal(rows, big[:, :100].transpose(1, 2, 0) / np.float32(255))
    sent = sum(n for p, n in RangeHandler.served if p == '/big_cog.tif')
    # the first row of 256 px tiles is a quarter of the file, plus the header
    assert 0 < sent < os.path.getsize(path) * 0.4


def test_a_server_failing_each_first_request_is_retried(files, server):
    """Every range refused once (503), then served: read as the local file
    under the default retry settings; with GDAL's own default (no retry)
    the same read fails, so the retry is what reads it."""
    assert os.environ['GDAL_HTTP_MAX_RETRY'] == '3'
    with rasterio.open(files['cog']) as src:
        want = src.read()
    # two addresses, since GDAL remembers what an address answered
    with rasterio.Env(GDAL_HTTP_MAX_RETRY='0'):
        with pytest.raises(DatasetError, match=f'Cannot read {server}/flaky/ortho_cog.tif'):
            with Image(f'{server}/flaky/ortho_cog.tif?once', [0, 1, 2], 3) as image:
                image.read()
    with Image(f'{server}/flaky/ortho_cog.tif?retried', [0, 1, 2], 3) as image:
        got, _ = image.read()
    np.testing.assert_array_equal(got, want.transpose(1, 2, 0) / np.float32(255))
    assert any('retried' in path for path, _ in RangeHandler.refused)   # it did refuse


@pytest.fixture(scope='module')
def https_server(files, tmp_path_factory):
    """https://127.0.0.1:<port>/ over the files' folder with a self-signed
    certificate made by openssl for 127.0.0.1, and that certificate's file."""
    folder = tmp_path_factory.mktemp('tls')
    cert, key = folder / 'cert.pem', folder / 'key.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
                    '-keyout', str(key), '-out', str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with serving(RangeHandler, os.path.dirname(files['plain']), context) as address:
        yield f'https://{address}', str(cert)


def test_a_cog_over_https_reads_as_the_local_file_once_its_certificate_is_trusted(
        files, https_server):
    """A server whose certificate no authority signed is refused, naming the
    address; trusted through GDAL's CA setting (GDAL_CURL_CA_BUNDLE, as
    README says), it reads as the local file."""
    address, cert = https_server
    with rasterio.open(files['cog']) as src:
        want = src.read()
    # two addresses, since GDAL remembers what an address answered
    with pytest.raises(DatasetError, match=f'Cannot read {address}/ortho_cog.tif\\?untrusted '
                       r'\(.*certificate.*GDAL_CURL_CA_BUNDLE='):
        with Image(f'{address}/ortho_cog.tif?untrusted', [0, 1, 2], 3) as image:
            image.read()
    with rasterio.Env(GDAL_CURL_CA_BUNDLE=cert):
        with Image(f'{address}/ortho_cog.tif?trusted', [0, 1, 2], 3) as image:
            got, _ = image.read()
            assert image.grid.transform == TRANSFORM
    np.testing.assert_array_equal(got, want.transpose(1, 2, 0) / np.float32(255))


def test_an_https_address_with_no_answer_names_the_certificate_setting_too():
    """GDAL does not always pass curl's reason for a TLS refusal on (in a
    process that has run TensorFlow it reported 'HTTP response code: 0'
    for the untrusted server above): no HTTP answer over https names the
    network and the certificate setting; over http, the network only."""
    found = str(unreadable('https://example.org/a.tif', 'HTTP response code: 0'))
    assert 'check the address and the network' in found and 'GDAL_CURL_CA_BUNDLE=' in found
    found = str(unreadable('http://example.org/a.tif', 'HTTP response code: 0'))
    assert 'check the address, the network' in found and 'CA_BUNDLE' not in found


class S3Handler(RangeHandler):
    """The files as objects of buckets 'survey' and 'copy' of an
    S3-compatible store (path-style addresses, /<bucket>/<name>), served
    only to requests signed (AWS Signature 4) with the access key KEY;
    others are answered 403 with S3's error document, and listed in denied."""
    KEY = 'AKIDSURVEYTEST'
    denied = []     # (path, the key the request was signed with)

    def do_GET(self, head=False):
        bucket, _, name = self.path[1:].partition('/')
        signature = self.headers.get('Authorization', '')
        key = signature.partition('Credential=')[2].partition('/')[0]
        if bucket not in ('survey', 'copy') or key != self.KEY:
            self.denied.append((self.path, key))
            body = b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>'
            self.send_response(403)
            self.send_header('Content-Type', 'application/xml')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        self.path = '/' + name
        super().do_GET(head)


@pytest.fixture(scope='module')
def s3_endpoint(files):
    """host:port of the loopback S3-compatible store (S3Handler)."""
    with serving(S3Handler, os.path.dirname(files['plain'])) as address:
        yield address


def test_an_s3_address_reads_as_the_local_file_with_the_environments_credentials(
        files, s3_endpoint, monkeypatch):
    """s3://survey/ortho_cog.tif with the credentials and endpoint in the
    environment, as GDAL reads them: the local file's pixels and grid;
    with the wrong key the store's refusal is one line naming the address."""
    with rasterio.open(files['cog']) as src:
        want = src.read()
    for name, value in dict(AWS_S3_ENDPOINT=s3_endpoint, AWS_HTTPS='NO',
                            AWS_VIRTUAL_HOSTING='FALSE', AWS_REGION='us-east-1',
                            AWS_SECRET_ACCESS_KEY='secret').items():
        monkeypatch.setenv(name, value)
    # two buckets of the same files, since GDAL remembers what an address answered
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'AKIDSOMEONEELSE')
    with pytest.raises(DatasetError, match=r'Cannot read s3://copy/ortho_cog.tif \(.*AccessDenied.*credentials'):
        with Image('s3://copy/ortho_cog.tif', [0, 1, 2], 3) as image:
            image.read()
    assert ('/copy/ortho_cog.tif', 'AKIDSOMEONEELSE') in S3Handler.denied
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', S3Handler.KEY)
    with Image('s3://survey/ortho_cog.tif', [0, 1, 2], 3) as image:
        got, _ = image.read()
        assert image.grid.transform == TRANSFORM
    np.testing.assert_array_equal(got, want.transpose(1, 2, 0) / np.float32(255))
    assert not [d for d in S3Handler.denied if d[0].startswith('/survey/')]


def _missing_tile(files, folder):
    """The VRT mosaic elsewhere, its tiles named by full path, the last one gone."""
    tiles = os.path.dirname(files['vrt'])
    text = open(files['vrt']).read().replace('relativeToVRT="1">', f'relativeToVRT="0">{tiles}/')
    broken = folder / 'broken.vrt'
    broken.write_text(text.replace('tile_3.tif', 'gone.tif'))
    return broken


def test_bad_addresses_and_files_are_one_line_errors(files, server, tmp_path):
    """404, a server stopping mid-file, a VRT naming a missing tile."""
    with pytest.raises(DatasetError, match=f'Cannot read {server}/missing.tif .*404'):
        Image(f'{server}/missing.tif', [0, 1, 2], 3)
    with Image(f'{server}/cut/big_cog.tif', [0, 1, 2], 3) as image:
        with pytest.raises(DatasetError, match=f'Cannot read {server}/cut/big_cog.tif'):
            image.read()
    broken = _missing_tile(files, tmp_path)
    with pytest.raises(DatasetError, match=f'Cannot read {broken} .*gone.tif') as err:
        with Image(str(broken), [0, 1, 2], 3) as image:
            image.read()
    assert '\n' not in str(err.value)


def test_heights_and_labels_in_any_format(tmp_path):
    """Training reads heights and labels through the same layer: a JPEG 2000
    band reads as the GeoTIFF band."""
    band = _pixels()[:1]
    tif = _write(tmp_path / 'labels_plain.tif', band)
    jp2 = _write(tmp_path / 'labels.jp2', band, driver='JP2OpenJPEG', QUALITY=100,
                 REVERSIBLE='YES')
    np.testing.assert_array_equal(read_raw(jp2)[0], read_raw(tif)[0])
    np.testing.assert_array_equal(read_height(jp2), read_height(tif))


@pytest.mark.slow
def test_predict_gives_each_format_the_heights_and_grid_of_the_plain_geotiff(
        files, server, weights, tmp_path):
    """One predict.py run over every format and every bad input: the good
    ones predicted with the plain GeoTIFF's heights and grid, one line per
    bad one, exit status 1, no traceback."""
    nogeo = str(tmp_path / 'nogeo.jp2')
    with rasterio.Env(GDAL_PAM_ENABLED='NO'):
        with rasterio.open(nogeo, 'w', driver='JP2OpenJPEG', height=H, width=W, count=3,
                           dtype='uint8', QUALITY=100, REVERSIBLE='YES') as out:
            out.write(_pixels(seed=1))
    broken = _missing_tile(files, tmp_path)
    good = {'plain': files['plain'], 'jp2': files['jp2'], 'vrt': files['vrt'],
            'png': files['png'], 'cog': f'{server}/ortho_cog.tif'}
    bad = [f'{server}/missing.tif', f'{server}/cut/big_cog.tif', str(broken), nogeo]
    out = tmp_path / 'out'
    argv = [a for a in _cli(weights) if a != '--ungeoreferenced']
    proc = run_python(['predict.py', *good.values(), *bad, '--out', str(out),
                       '--outputs', 'height', *argv])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: 4 input(s) skipped: ') and '\n' not in last
    for name in bad:
        assert name in last
    assert 'Fix: georeference it' in last
    with rasterio.open(out / 'plain_height.tif') as src:
        want, grid = src.read(), (src.crs, src.transform)
    assert grid == (rasterio.crs.CRS.from_string(CRS), TRANSFORM)
    for kind, name in (('jp2', 'ortho_jp2'), ('vrt', 'mosaic'), ('png', 'ortho_png'),
                       ('cog', 'ortho_cog')):
        with rasterio.open(out / f'{name}_height.tif') as src:
            np.testing.assert_array_equal(src.read(), want, err_msg=kind)
            assert (src.crs, src.transform) == grid, kind
    assert not list(out.glob('big_cog*')) and not list(out.glob('nogeo*'))
