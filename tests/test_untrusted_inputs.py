"""Unclear errors of issue 11 on image inputs: bomb PNGs, FIFOs in image folders, SSIM on 0x0 images, LPIPS on
float64 or numpy input. Each ends in one line naming the input and the fix (or in a result), never a hang."""
import os
import struct
import threading
import zlib

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from genmetrics.stats import LPIPS, ms_ssim, ssim
from genmetrics.stats.images.image_files import iter_image_files, list_image_files
from genmetrics.stats.networks.lpips import LPIPS_NETS


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path, side=20000):
    """A 100-byte PNG declaring side x side RGB pixels (1.2 GB decoded)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_png_names_the_file(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    _bomb_png(folder / "b.png")
    with pytest.raises(ValueError, match=r"image .*b.png is too large to decode safely") as info:
        list(iter_image_files(folder))
    assert "\n" not in str(info.value)


class _Pool(torch.nn.Module):
    def forward(self, x):
        return {"pool3": torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)}


def test_the_pixel_limit_holds_whatever_pil_is_set_to(tmp_path, monkeypatch):
    """Some libraries set PIL's Image.MAX_IMAGE_PIXELS = None; the bomb is still refused, from its header, before
    anything is decoded, with the limit genmetrics applies (image_files.MAX_IMAGE_PIXELS) and how to get past it."""
    from genmetrics.stats import extract_features
    from genmetrics.stats.images import image_files

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    folder = tmp_path / "images"
    folder.mkdir()
    _bomb_png(folder / "b.png")
    with pytest.raises(ValueError, match=r"image .*b.png is too large to decode safely: 20000 x 20000 = 400 megapixels "
                                         r"\(1.1 GiB decoded\), more than the 179 megapixels .*MAX_IMAGE_PIXELS"):
        extract_features(str(folder), model=_Pool(), progress=False)
    monkeypatch.setattr(image_files, "MAX_IMAGE_PIXELS", 30 * 30)
    Image.new("RGB", (30, 30), "red").save(folder / "b.png")
    assert extract_features(str(folder), model=_Pool(), progress=False)["pool3"].shape == (1, 12)
    Image.new("RGB", (31, 30), "red").save(folder / "b.png")
    with pytest.raises(ValueError, match=r"b.png is too large to decode safely: 31 x 30 = 0.00093 megapixels "
                                         r".*more than the 0.0009 megapixels"):
        extract_features(str(folder), model=_Pool(), progress=False)


def test_a_zip_member_that_unpacks_huge_is_refused_before_reading(tmp_path, monkeypatch):
    """A zip bomb member (here: zeros compressing 1000x) is refused from its declared size, naming it."""
    import zipfile

    from genmetrics.stats.images import image_files

    monkeypatch.setattr(image_files, "MAX_ZIP_MEMBER_BYTES", 1 << 20)  # the real cap is 256 MiB
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
        z.write(tmp_path / "ok.png", "a.png")
        z.writestr("b.png", bytes(4 << 20))
    assert os.path.getsize(archive) < 64 << 10
    with pytest.raises(ValueError, match=r"bomb.zip:b.png unpacks to 4194304 bytes, more than the 1 MiB"):
        list(iter_image_files(str(archive)))


def test_a_fifo_named_png_in_an_image_folder_is_skipped(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    os.mkfifo(folder / "x.png")
    read = []
    worker = threading.Thread(target=lambda: read.extend(iter_image_files(folder)), daemon=True)
    worker.start()
    worker.join(20)
    assert len(read) == 1, "reading the folder hung on the FIFO"
    assert list_image_files(folder) == ["a.png"]
    with pytest.raises(ValueError, match="x.png is not a regular file"):
        list(iter_image_files(folder, names=["x.png"]))


@pytest.mark.parametrize("metric", [ssim, ms_ssim])
@pytest.mark.parametrize("shape", [(2, 3, 0, 0), (1, 3, 0, 40), (1, 0, 200, 200)])
def test_ssim_on_images_without_pixels_is_a_clear_error(metric, shape):
    x = torch.zeros(shape)
    with pytest.raises(ValueError, match=r"hold no pixels .* pass images of at least 11x11"):
        metric(x, x, data_range=1.0)


@pytest.fixture(scope="module")
def squeeze_lpips(tmp_path_factory):
    """LPIPS (squeeze) on a seeded random SqueezeNet backbone saved in torchvision's key layout."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, LPIPS_NETS["squeeze"].architecture)(weights=None)
    path = tmp_path_factory.mktemp("backbone") / "squeezenet-random.pth"
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("features.")}, path)
    return LPIPS("squeeze", backbone_weights=str(path))


def test_lpips_accepts_float64_and_numpy_input(squeeze_lpips):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, 3, 32, 32))
    y = np.clip(x + rng.normal(0, 0.2, x.shape), -1, 1)
    expected = squeeze_lpips(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    for a, b in ((x, y), (torch.from_numpy(x), torch.from_numpy(y)), (x.astype(np.float16), y.astype(np.float16))):
        got = squeeze_lpips(a, b)
        assert got.dtype == torch.float32 and got.shape == (2,)
        torch.testing.assert_close(got, expected, rtol=1e-2 if a.dtype == np.float16 else 1e-6, atol=1e-6)


def test_lpips_refuses_integer_and_non_numeric_input_clearly(squeeze_lpips):
    with pytest.raises(TypeError, match=r"x must be a float tensor or array .* got torch.uint8; convert uint8"):
        squeeze_lpips(np.zeros((1, 3, 32, 32), np.uint8), np.zeros((1, 3, 32, 32), np.uint8))
    with pytest.raises(TypeError, match="x must be a float tensor or array"):
        squeeze_lpips("not an image", "not an image")
