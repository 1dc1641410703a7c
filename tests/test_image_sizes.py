"""Images of different sizes and very large images (issue 19, items 3 and 13).

3: scoring takes images of different sizes, as extract_features does, with its numbers; the preview grid fits them
   into one cell and diversity metrics say why they are not computed.
13: extracting features of a folder of large images holds the resized batches and one decoded image, not a batch of
   decoded images (peak RSS of a subprocess).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fixtures_plugin_scoring import TinyExtractor, make_tiny_reference, tiny_images
from PIL import Image

SIZES = [(16, 16), (40, 24), (20, 48), (16, 16), (64, 64), (33, 17)]


def _mixed_images():
    """Six images of five sizes in the forms a user mixes: HWC uint8 arrays, a CHW float tensor, PIL images."""
    rng = np.random.default_rng(11)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    given = list(arrays)
    given[1] = torch.from_numpy(arrays[1]).permute(2, 0, 1).float() / 255
    given[2] = Image.fromarray(arrays[2])
    return arrays, given


@pytest.fixture(scope="module")
def reference():
    return make_tiny_reference(tiny_images(24, seed=3, size=16))


def _expected(images, reference):
    """FID and KID from extract_features, as a user computes them by hand."""
    from genmetrics.stats import GaussianMoments, extract_features, frechet_distance, kernel_inception_distance

    feats = extract_features(images, model=TinyExtractor(), progress=False)["pool3"]
    moments = GaussianMoments.from_features(feats)
    fid = frechet_distance(reference.mu, reference.sigma, moments.mean, moments.cov, features2=feats)
    kid, _ = kernel_inception_distance(torch.as_tensor(reference.features), feats, subset_size=len(images))
    return fid, kid


def test_score_samples_on_images_of_different_sizes_equals_extract_features(reference, tmp_path):
    from genmetrics.plugin import score_samples

    arrays, given = _mixed_images()
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, image in enumerate(arrays):
        Image.fromarray(image).save(folder / f"{i}.png")
    fid, kid = _expected(arrays, reference)
    for images in (given, str(folder)):
        result = score_samples(images, reference=reference, metrics=["fid", "kid"], model=TinyExtractor())
        # scoring sums the float64 moments image by image, _expected all at once: rounding, amplified by a
        # covariance of rank 5 < 48 (6 images); KID reads the same features
        assert result.metrics["gen/fid"] == pytest.approx(fid, rel=1e-6)
        assert result.metrics["gen/kid"] == pytest.approx(kid, rel=1e-9, abs=1e-12)
        assert result.params["gen/num_samples"] == str(len(SIZES))


def test_preview_fits_images_of_different_sizes_and_diversity_says_why_it_is_skipped(reference):
    from genmetrics.plugin import score_samples
    from genmetrics.plugin.copy_grid import fit_cell
    from genmetrics.plugin.grid import make_grid

    arrays, given = _mixed_images()
    result = score_samples(given, reference=reference, metrics=None, model=TinyExtractor())
    assert result.preview.shape == (len(SIZES), 64, 64, 3)  # the largest side, 64 px
    for image, tile in zip(arrays, result.preview):
        assert np.array_equal(tile, fit_cell(image, 64))
    assert make_grid(result.preview).dtype == np.uint8
    reason = result.tags["gen/skipped.ssim_diversity"]
    assert "differ in size (16x16, 40x24, 20x48 and 2 more)" in reason and "resize them to one size" in reason
    assert "gen/fid" in result.metrics and not any("diversity" in key for key in result.metrics)
    with pytest.raises(ValueError, match=r"cannot compute 'ssim_diversity': the samples differ in size"):
        score_samples(given, reference=reference, metrics=["fid", "ssim"], model=TinyExtractor())


def test_paired_targets_may_differ_in_size_pair_by_pair():
    from genmetrics.plugin import score_samples

    arrays, given = _mixed_images()
    big = [a for a in arrays if min(a.shape[:2]) >= 11]  # SSIM's window is 11 px
    result = score_samples(big, targets=[a.copy() for a in big], metrics=["ssim"])
    assert result.metrics["gen/ssim"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"targets must pair one-to-one with samples of the same size"):
        score_samples(big, targets=big[::-1], metrics=["ssim"])


MEMORY_SCRIPT = r"""
import json, sys
import torch
from genmetrics.stats import extract_features

class Pool(torch.nn.Module):  # a network that costs nothing: what is measured is the input path
    def forward(self, x):
        return {"pool3": torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)}

def status(key):  # bytes; VmHWM is this process's peak (ru_maxrss would include the parent's at fork time)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

folder, warm, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
modes = ("clean", "legacy_tensorflow", "legacy_pytorch")
for mode in modes:  # loads what the first call loads (PIL plugins, torch kernels) before the baseline
    extract_features(warm, model=Pool(), mode=mode, batch_size=batch_size, progress=False)
try:  # the peak so far (imports) set to the current size, where the kernel allows it
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base, rows = status("VmRSS"), {}
for mode in modes:
    features = extract_features(folder, model=Pool(), mode=mode, batch_size=batch_size, progress=False)
    rows[mode] = features["pool3"].shape[0]
print(json.dumps({"growth": status("VmHWM") - base, "rows": rows}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak resident set size from /proc")
def test_a_folder_of_large_images_holds_one_decoded_image_at_a_time(tmp_path):
    """Two 5000 x 5000 PNGs (solid colours: small files), every mode, batch_size 50: the peak resident memory grows
    by less than 3 x (one network batch + one decoded image) = 386 MB. Before: +1180 MB (the images decoded together,
    each converted to float whole); now about +225 MB (PIL's decoded image, ours, one float channel)."""
    side, batch_size = 5000, 50
    folder, warm = tmp_path / "large", tmp_path / "warm"
    folder.mkdir()
    warm.mkdir()
    Image.new("RGB", (side, side), (200, 30, 90)).save(folder / "a.png", compress_level=1)
    Image.new("RGB", (side - 7, side), (20, 130, 90)).save(folder / "b.png", compress_level=1)
    Image.new("RGB", (8, 8)).save(warm / "a.png")
    run = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder), str(warm), str(batch_size)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    assert measured["rows"] == {"clean": 2, "legacy_tensorflow": 2, "legacy_pytorch": 2}
    network_batch = batch_size * 299 * 299 * 3 * 4
    one_image = side * side * 3
    assert measured["growth"] < 3 * (network_batch + one_image), measured


def test_a_samples_file_keeps_images_of_different_sizes_and_refuses_sizes_that_do_not_add_up(tmp_path):
    from genmetrics.plugin.samples import SamplesFileError, read_samples_file, to_uint8_nhwc, write_samples_file

    arrays, given = _mixed_images()
    stored = to_uint8_nhwc(given)
    assert isinstance(stored, list) and all(np.array_equal(a, b) for a, b in zip(arrays, stored))
    write_samples_file(tmp_path / "mixed.npz", stored, targets=stored[::-1])
    samples, targets = read_samples_file(tmp_path / "mixed.npz")
    assert [s.shape for s in samples] == [a.shape for a in arrays]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, samples))
    assert all(np.array_equal(a, b) for a, b in zip(arrays[::-1], targets))
    pixels = sum(h * w for h, w in SIZES)
    for sizes in ([[16, 16]] * 5 + [[33, 18]], [[pixels, 1]] + [[0, 5]] * 5, [[2 ** 32, 2 ** 32], [1, pixels]]):
        with open(tmp_path / "crafted.npz", "wb") as f:
            np.savez_compressed(f, samples_pixels=np.zeros((pixels, 3), np.uint8),
                                samples_sizes=np.array(sizes, np.int64))
        with pytest.raises(SamplesFileError, match=r"'samples_sizes' does not describe the \d+ pixels"):
            read_samples_file(tmp_path / "crafted.npz")
