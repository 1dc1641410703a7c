"""extract_features: every accepted input form, batching independence, folders/zips, bad input."""
import os
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_data import make_photo_folder
from PIL import Image

from genmetrics.stats import extract_features
from genmetrics.stats.images.image_files import list_image_files
from genmetrics.stats.images.image_input import count_images, iter_image_batches


class BlockMeans(torch.nn.Module):
    """A tiny real feature extractor (23x23 block means of the 299x299 input) for the plumbing tests."""

    def forward(self, x):
        return {"pool3": F.avg_pool2d(x, 23).flatten(1)}


@pytest.fixture(scope="module")
def crops(photos):
    """Four real photos cropped to one size (uint8 NHWC)."""
    return np.stack([p[:120, :160] for p in photos[:4]])


def _features(images, **kwargs):
    kwargs.setdefault("model", BlockMeans())
    kwargs.setdefault("progress", False)
    return extract_features(images, **kwargs)["pool3"]


def test_input_forms_give_the_same_features(crops, tmp_path):
    reference = _features(crops)
    assert reference.shape == (4, 3 * 13 * 13) and reference.dtype == torch.float32
    nchw = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    folder = make_photo_folder(tmp_path / "folder", list(crops))
    same = {
        "torch NCHW": nchw,
        "numpy NCHW": nchw.numpy(),
        "torch NHWC": torch.from_numpy(crops),
        "list of HWC images": list(crops),
        "list of CHW images": list(nchw),
        "generator of batches": (nchw[i:i + 3] for i in range(0, 4, 3)),
        "PIL images": [Image.fromarray(c) for c in crops],
        "folder": folder,
    }
    for name, images in same.items():
        assert torch.equal(_features(images), reference), name
    floats = crops.astype(np.float64) / 255.0
    assert float((_features(floats) - reference).abs().max()) < 1e-5


def test_rows_follow_input_order_whatever_the_batching(photos):
    images = [p[:64, :80] for p in photos]
    reference = torch.cat([_features([img]) for img in images])
    for batch_size in (1, 3, 50):
        assert torch.equal(_features(images, batch_size=batch_size), reference)
    chunks = (np.stack(images[i:i + 3]) for i in range(0, len(images), 3))
    assert torch.equal(_features(chunks, batch_size=2), reference)


def test_inception_features_independent_of_batch_size(inception, photos):
    images = photos[:3]
    one = extract_features(images, model=inception, batch_size=1, progress=False)["pool3"]
    two = extract_features(iter(images), model=inception, batch_size=2, progress=False)["pool3"]
    all_at_once = extract_features(images, model=inception, batch_size=50, progress=False)["pool3"]
    assert one.shape == (3, 2048) and one.dtype == torch.float32 and one.device.type == "cpu"
    diff = max(float((one - two).abs().max()), float((one - all_at_once).abs().max()))
    print(f"max |diff| over batch sizes 1/2/50: {diff:.2e}")
    assert diff < 1e-5


def test_grayscale_is_replicated_and_alpha_dropped(crops):
    rgb = torch.from_numpy(crops[:2]).permute(0, 3, 1, 2)
    gray = rgb[:, :1]
    (replicated,) = iter_image_batches(gray)
    assert torch.equal(replicated, gray.expand(-1, 3, -1, -1))
    rgba = torch.cat([rgb, torch.full_like(rgb[:, :1], 7)], dim=1)
    (dropped,) = iter_image_batches(rgba.permute(0, 2, 3, 1).numpy())
    assert torch.equal(dropped, rgb)
    (single_gray,) = iter_image_batches([crops[0, :, :, 0]])
    assert single_gray.shape == (1, 3, 120, 160)


def test_layout_rule_prefers_nchw_when_ambiguous():
    ambiguous = torch.zeros(2, 3, 5, 3, dtype=torch.uint8)  # NCHW (3 channels, 5x3) or NHWC (3x5, 3 channels)
    (batch,) = iter_image_batches(ambiguous)
    assert batch.shape == (2, 3, 5, 3)


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow", "legacy_pytorch"])
def test_files_of_different_sizes_give_each_image_its_features_alone(photos, tmp_path, monkeypatch, mode):
    """Images of different sizes (issue 19 item 3) from a folder, a zip and a list: each row equals the image's
    features computed alone, whether the file is decoded and resized in the pool's threads or, as a large one
    (issue 19 item 13; the threshold lowered here), alone in the reading thread."""
    from genmetrics.stats.images import image_files

    images = [p[:h, :w] for p, (h, w) in zip(photos, [(40, 60), (64, 48), (33, 90), (120, 160), (40, 60)])]
    folder = make_photo_folder(tmp_path / "mixed", images)
    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in list_image_files(folder):
            z.write(os.path.join(folder, name), arcname=name)
    alone = torch.cat([_features(image[None], mode=mode) for image in images])
    for threshold in (image_files.LARGE_IMAGE_PIXELS, 40 * 60):  # none large; the 3 larger ones large
        monkeypatch.setattr(image_files, "LARGE_IMAGE_PIXELS", threshold)
        for source in (folder, str(archive), images):
            for batch_size in (1, 2, 50):
                assert torch.equal(_features(source, mode=mode, batch_size=batch_size), alone), (source, threshold)


def test_folder_is_recursive_sorted_and_equals_zip(crops, tmp_path):
    root = tmp_path / "nested"
    make_photo_folder(root / "b", list(crops[:2]), ext="png")
    make_photo_folder(root / "a", list(crops[2:3]), ext="bmp")
    Image.fromarray(crops[3]).save(root / "c.TIFF")
    (root / "notes.txt").write_text("not an image")
    names = list_image_files(root)
    assert names == sorted(names) and len(names) == 4
    assert names[0] == os.path.join("a", "0000.bmp")
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in reversed(names):
            z.write(root / name, arcname=name.replace(os.sep, "/"))
    assert count_images(str(archive)) == count_images(root) == 4
    from_folder, from_zip = _features(root), _features(str(archive))
    assert torch.equal(from_folder, from_zip)
    expected_order = [crops[2], crops[0], crops[1], crops[3]]  # a/0000.bmp, b/0000.png, b/0001.png, c.TIFF
    assert torch.equal(from_folder, _features(np.stack(expected_order)))


def test_jpeg_and_webp_files_are_read(crops, tmp_path):
    make_photo_folder(tmp_path / "jpg", list(crops[:2]), ext="jpg")
    make_photo_folder(tmp_path / "webp", list(crops[:2]), ext="webp")
    for sub in ("jpg", "webp"):
        feats = _features(tmp_path / sub)
        assert feats.shape[0] == 2 and torch.isfinite(feats).all()


def test_progress_bar_is_shown(crops, capsys):
    _features(crops, progress=True)
    assert "Inception features" in capsys.readouterr().err
    _features(crops, progress=False)
    assert "Inception features" not in capsys.readouterr().err


def test_model_training_flag_is_restored(crops):
    model = BlockMeans().train()
    _features(crops, model=model)
    assert model.training


def test_device_must_match_the_model(inception):
    with pytest.raises(ValueError, match="model is on cpu"):
        extract_features(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), model=inception, device="meta", progress=False)


def test_logits_only_with_head(inception, photos):
    assert not inception.has_logits
    feats = extract_features(photos[:1], model=inception, progress=False, mode="legacy_pytorch")
    assert set(feats) == {"pool3"}


_u8 = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)


@pytest.mark.parametrize("images,error,match", [
    (torch.full((1, 3, 8, 8), float("nan")), ValueError, "NaN/Inf"),
    (np.full((1, 8, 8, 3), np.inf, dtype=np.float32), ValueError, "NaN/Inf"),
    (torch.full((1, 3, 8, 8), 2.0), ValueError, r"outside \[0, 1\].*\(x \+ 1\) / 2"),
    (torch.full((1, 3, 8, 8), -0.5), ValueError, r"\(x \+ 1\) / 2"),
    (torch.zeros(1, 2, 8, 8, dtype=torch.uint8), ValueError, "1 \\(gray\\), 3 \\(RGB\\) or 4 \\(RGBA\\)"),
    (torch.zeros(1, 8, 8, 5, dtype=torch.uint8), ValueError, "channel axis"),
    (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), ValueError, "no images"),
    ([], ValueError, "no images"),
    ((x for x in []), ValueError, "no images"),
    (torch.tensor(3), ValueError, "scalar"),
    (torch.zeros(8, dtype=torch.uint8), ValueError, "1 dimensions"),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), ValueError, r"x\[None\]"),
    (torch.zeros(1, 1, 3, 8, 8, dtype=torch.uint8), ValueError, "5 dimensions"),
    (torch.zeros(1, 3, 0, 8, dtype=torch.uint8), ValueError, "empty images"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.int64), TypeError, "uint8"),
    (np.zeros((1, 3, 8, 8), dtype=bool), TypeError, "uint8"),
    ({"images": _u8}, TypeError, "iterable"),
    (42, TypeError, "int"),
    ([(_u8, 0)], TypeError, r"x, _ in loader"),
    ("/nonexistent/folder", FileNotFoundError, "does not exist"),
])
def test_bad_input_is_refused_with_a_fix(images, error, match):
    with pytest.raises(error, match=match):
        _features(images)


def test_bad_files_and_arguments(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in"):
        _features(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="x.png"):
        _features(tmp_path / "broken")
    with pytest.raises(ValueError, match="batch_size"):
        _features(_u8, batch_size=0)
    with pytest.raises(ValueError, match="mode"):
        _features(_u8, mode="bicubic")
