"""The FID Inception's ``spatial`` layer (sFID's features): pytorch-fid's Mixed_6d 1x1 branch on the real weights,
its first 7 channels in (height, width, channel) order, the fast path equal to the exact one, computed only on
request; layer names validated by the extractor spec; the accumulator's moments of extra layers."""
import numpy as np
import pytest
import torch

from genmetrics.stats import EXTRACTORS, FEATURE_EXTRACTOR, MODES, FeatureAccumulator, GaussianMoments, extract_features
from genmetrics.stats.defaults import SPATIAL_LAYER
from genmetrics.stats.images.preprocess import preprocess
from genmetrics.stats.networks.inception import SPATIAL_DIM
from genmetrics.stats.networks.inception_fast import fast_inception

SIDE = 17  # Mixed_6d's grid for a 299 input
#: Relative max difference allowed between two float32 computations of the same features (fast vs exact path,
#: ours vs pytorch-fid's module): float32 rounding of ~90 layers, measured ~2e-6.
ROUNDING = 1e-5


@pytest.fixture(scope="module")
def images(photos):
    """Three real photos cropped to one size, uint8 NCHW."""
    return torch.from_numpy(np.stack([p[:96, :128] for p in photos[:3]])).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def pytorch_fid_net(head_state_dict):
    """pytorch-fid's own FID Inception module (``fid_inception_v3``: FIDInceptionA..E) with the offline weights."""
    import pytorch_fid.inception

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pytorch_fid.inception, "load_state_dict_from_url",
                      lambda url, *args, **kwargs: {k: v.clone() for k, v in head_state_dict.items()})
        return pytorch_fid.inception.fid_inception_v3().eval()


def _their_branch1x1(net, x):
    """Output of pytorch-fid's ``Mixed_6d.branch1x1`` (conv, BatchNorm, ReLU) for the network input `x`."""
    captured = []
    handle = net.Mixed_6d.branch1x1.register_forward_hook(lambda module, args, out: captured.append(out.clone()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    return captured[0]


def _rel(ours, theirs):
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.parametrize("mode", MODES)
def test_spatial_is_pytorch_fids_mixed_6d_1x1_branch(inception, pytorch_fid_net, images, mode):
    """Every mode, exact and fast path: (N, 2023) = the branch's first 7 channels, (H, W, C) flattened."""
    branch = _their_branch1x1(pytorch_fid_net, preprocess(images, mode))
    assert branch.shape == (3, 192, SIDE, SIDE) and float(branch.min()) >= 0  # after the ReLU
    expected = branch[:, :7].permute(0, 2, 3, 1).reshape(3, -1)
    exact, fast = (extract_features(images, model=inception, mode=mode, progress=False, fast=fast,
                                    layers=["pool3", "spatial"]) for fast in (False, True))
    for ours in (exact, fast):
        assert list(ours) == ["pool3", "spatial"] and ours["spatial"].shape == (3, SPATIAL_DIM) == (3, 2023)
        assert _rel(ours["spatial"], expected) < ROUNDING
    assert _rel(fast["spatial"], exact["spatial"]) < ROUNDING and _rel(fast["pool3"], exact["pool3"]) < ROUNDING
    print(f"{mode}: spatial exact vs pytorch-fid {_rel(exact['spatial'], expected):.1e}, fast vs exact "
          f"{_rel(fast['spatial'], exact['spatial']):.1e} (relative max)")


def test_flattening_order_is_height_width_channel(inception, pytorch_fid_net, images):
    """spatial[n, (h * 17 + w) * 7 + c] = branch1x1[n, c, h, w]: the evaluator's NHWC ``[..., :7]`` reshaped."""
    x = preprocess(images[:1], "legacy_tensorflow")
    branch = _their_branch1x1(pytorch_fid_net, x)[0]
    with torch.no_grad():
        spatial = inception(x, spatial=True)["spatial"][0]
    for h, w, c in [(0, 0, 0), (0, 0, 6), (0, 1, 0), (1, 0, 0), (5, 11, 3), (16, 16, 6)]:
        assert float(spatial[(h * SIDE + w) * 7 + c]) == pytest.approx(float(branch[c, h, w]), rel=1e-5, abs=1e-5)
    channel_major = branch[:7].reshape(-1)  # (C, H, W) order: not what sFID uses
    assert _rel(spatial, channel_major) > 0.1


def test_spatial_only_on_request_default_outputs_unchanged(inception, inception_with_head, images):
    """Without `layers` the outputs are today's; asking for spatial leaves pool3 and logits bit for bit as they
    were; `layers` returns exactly the named layers."""
    default = extract_features(images[:2], model=inception_with_head, progress=False)
    assert list(default) == ["pool3", "logits"]
    asked = extract_features(images[:2], model=inception_with_head, progress=False,
                             layers=["spatial", "logits", "pool3"])
    assert list(asked) == ["spatial", "logits", "pool3"]
    assert torch.equal(asked["pool3"], default["pool3"]) and torch.equal(asked["logits"], default["logits"])
    assert list(extract_features(images[:1], model=inception, progress=False, layers="spatial")) == ["spatial"]
    x = preprocess(images[:1], "clean")
    with torch.no_grad():
        assert set(inception(x)) == {"pool3"} and set(fast_inception(inception)(x)) == {"pool3"}
        assert set(fast_inception(inception)(x, spatial=True)) == {"pool3", "spatial"}


def test_layers_are_validated_by_the_spec(inception, images):
    spec = EXTRACTORS[FEATURE_EXTRACTOR]
    assert spec.layers == ("pool3", "logits", SPATIAL_LAYER) and spec.on_request == (SPATIAL_LAYER,)
    with pytest.raises(ValueError, match="provides layers pool3, logits, spatial, not 'mixed_6'"):
        extract_features(images[:1], model=inception, progress=False, layers=["pool3", "mixed_6"])
    with pytest.raises(ValueError, match="layers is empty"):
        extract_features(images[:1], model=inception, progress=False, layers=[])
    with pytest.raises(ValueError, match="provides layers dinov2, not 'spatial'"):
        EXTRACTORS["dinov2-vit-s-14"].check_layers(["spatial"])
    with pytest.raises(ValueError, match="provides layers pool3, logits, spatial, not 'pool4'"):
        FeatureAccumulator(model=inception, layer="pool4")
    with pytest.raises(ValueError, match="not 'spatial2'"):
        FeatureAccumulator(extra_layers=["spatial2"])  # the default model: checked before it is loaded
    with pytest.raises(ValueError, match="'logits' needs Inception weights with the 1008-way classifier head"):
        extract_features(images[:1], model=inception, progress=False, layers=["logits"])


@pytest.mark.filterwarnings("ignore:covariance of D=")  # 3 images, 2023-D: the warning is right and beside the point
def test_accumulator_keeps_moments_of_extra_layers(inception, images):
    """extra_layers=["spatial"]: spatial moments from the same pass, pool3 numbers identical to the default
    accumulator, shards merge like one pass, precomputed features as a dict."""
    features = extract_features(images, model=inception, mode="legacy_tensorflow", progress=False,
                                layers=["pool3", "spatial"])
    accumulators = [FeatureAccumulator(model=inception, mode="legacy_tensorflow", keep_features=True,
                                       extra_layers=extra) for extra in ((), ["spatial"])]
    for accumulator in accumulators:
        accumulator.update(images)
    plain, both = (accumulator.compute() for accumulator in accumulators)
    assert torch.equal(both.features, plain.features) and both.provenance == plain.provenance
    assert np.array_equal(both.mu, plain.mu) and np.array_equal(both.sigma, plain.sigma)
    assert set(both.layer_moments) == {"spatial"} and plain.layer_moments == {}
    once = GaussianMoments.from_features(features["spatial"])
    assert both.layer_moments["spatial"].n == 3 and both.layer_moments["spatial"].mean.shape == (2023,)
    shards = [FeatureAccumulator(model=inception, mode="legacy_tensorflow", extra_layers=["spatial"])
              for _ in range(2)]
    shards[0].update(images[:2])
    shards[1].update(images[2:])
    merged = shards[0].merge(shards[1]).compute().layer_moments["spatial"]
    for spatial in (both.layer_moments["spatial"], merged):
        np.testing.assert_allclose(spatial.mean, once.mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(spatial.cov, once.cov, rtol=1e-10, atol=1e-12)

    given = FeatureAccumulator(model=inception, extra_layers=["spatial"])
    given.update(features={"pool3": features["pool3"], "spatial": features["spatial"].numpy()})
    assert given.layer_moments["spatial"].n == 3
    with pytest.raises(ValueError, match="features=\\{layer: \\(N, D\\) array\\} for pool3, spatial"):
        given.update(features=features["pool3"])
    with pytest.raises(ValueError, match="same extra_layers"):
        given.merge(FeatureAccumulator(model=inception))
