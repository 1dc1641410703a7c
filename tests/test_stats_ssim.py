"""SSIM / MS-SSIM against scikit-image and pytorch-msssim on real photographs with real distortions."""
import io

import numpy as np
import pytest
import pytorch_msssim
import torch
from PIL import Image, ImageFilter
from skimage.metrics import structural_similarity
from tolerances import ssim_tol

from genmetrics.stats import MS_SSIM_WEIGHTS, ms_ssim, ssim

TOL = 1e-5


def _skimage_ssim(a, b, data_range, channel_axis=2):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=data_range, channel_axis=channel_axis)


def _exact_window(channels):
    """The Gaussian window in float64 for pytorch-msssim (its own window is computed in float32)."""
    coords = torch.arange(11, dtype=torch.float64) - 5
    window = torch.exp(-coords ** 2 / (2 * 1.5 ** 2))
    return (window / window.sum()).view(1, 1, 1, 11).repeat(channels, 1, 1, 1)


def _distortions(img, seed):
    """Distorted versions of a uint8 (H, W, 3) photo: noise, blur, JPEG, shift, contrast, inversion."""
    rng = np.random.default_rng(seed)
    pil = Image.fromarray(img)
    jpeg = io.BytesIO()
    pil.save(jpeg, format="JPEG", quality=15)
    return {
        "noise": np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8),
        "blur": np.asarray(pil.filter(ImageFilter.GaussianBlur(2))),
        "jpeg": np.asarray(Image.open(jpeg).convert("RGB")),
        "shift": np.ascontiguousarray(np.roll(img, (3, -2), axis=(0, 1))),
        "contrast": (img * 0.5 + 60).astype(np.uint8),
        "inverted": 255 - img,
    }


@pytest.fixture(scope="module")
def pairs(photos):
    """(name, reference, distorted) uint8 (H, W, 3): three photos cropped to odd and even sizes above 160 px."""
    sizes = [(200, 240), (181, 233), (170, 170)]
    out = []
    for k, (img, (h, w)) in enumerate(zip(photos[:3], sizes)):
        crop = np.ascontiguousarray(img[:h, :w])
        out += [(name, crop, d) for name, d in _distortions(crop, k).items()]
    return out


def _nchw(*imgs):
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def test_ssim_equals_scikit_image_and_pytorch_msssim(pairs):
    worst = {"skimage": 0.0, "skimage_float64": 0.0, "pytorch_msssim": 0.0}
    for k, (name, ref, dist) in enumerate(pairs):
        expected = _skimage_ssim(ref, dist, 255)
        x, y = _nchw(ref), _nchw(dist)
        ours = ssim(x, y)  # uint8: data_range 255 inferred
        assert ours.shape == (1,) and ours.dtype == torch.float32
        peer = float(pytorch_msssim.ssim(x.float(), y.float(), data_range=255, size_average=False))
        unit = float(ssim(x.float() / 255, y.float() / 255, data_range=1.0))
        worst["skimage"] = max(worst["skimage"], abs(float(ours) - expected), abs(unit - expected))
        worst["pytorch_msssim"] = max(worst["pytorch_msssim"], abs(float(ours) - peer))
        if k % 3 == 0:  # float64 on a third of the pairs (slower); relative to its bound (5e-11)
            exact = float(ssim(x.double(), y.double(), data_range=255))
            worst["skimage_float64"] = max(worst["skimage_float64"], abs(exact - expected) / ssim_tol(ref.size))
    print("max |ssim diff|", worst)
    assert worst["skimage"] < TOL and worst["pytorch_msssim"] < TOL and worst["skimage_float64"] <= 1.0
    inverted = [float(ssim(_nchw(r), _nchw(d))) for name, r, d in pairs if name == "inverted"]
    assert max(inverted) < 0  # SSIM is not bounded below by 0


def test_ssim_batch_grayscale_and_numpy_input(pairs):
    same_size = [(r, d) for _, r, d in pairs if r.shape == pairs[0][1].shape]
    x, y = _nchw(*[r for r, _ in same_size]), _nchw(*[d for _, d in same_size])
    per_image = torch.stack([ssim(x[i:i + 1], y[i:i + 1])[0] for i in range(len(x))])
    assert ssim(x, y).shape == (len(x),)
    assert torch.allclose(ssim(x, y), per_image, atol=1e-6, rtol=0)
    assert torch.allclose(ssim(x.numpy(), y.numpy()), per_image, atol=1e-6, rtol=0)
    gray, gray_noisy = x[0, 0].numpy(), y[0, 0].numpy()
    expected = _skimage_ssim(gray, gray_noisy, 255, channel_axis=None)
    assert abs(float(ssim(x[:1, :1], y[:1, :1])) - expected) < TOL
    assert abs(float(ssim(gray, gray_noisy)) - expected) < TOL  # one HxW image


def _ms_ssim_tol(x, y):
    """Bound on the difference of two float64 MS-SSIM computations of the (1, C, H, W) pair on 0..255.

    MS-SSIM = mean over channels of prod_j f_j^w_j (f_j: the mean cs at scales 1-4, the mean SSIM at 5);
    each f_j within ssim_tol (absolute, |f_j| <= 1) moves f_j^w_j by w_j ssim_tol / f_j relative (first
    order; the factors are taken from pytorch-msssim's own loop, with a floor of 1e-3, below which an MS-SSIM
    of real photos does not fall)."""
    from pytorch_msssim.ssim import _ssim

    win, factors = _exact_window(x.shape[1]), []
    for scale, weight in enumerate(MS_SSIM_WEIGHTS):
        per_channel, cs = _ssim(x, y, data_range=255, win=win, size_average=False, K=(0.01, 0.03))
        factors.append((weight, (cs if scale < 4 else per_channel).clamp(min=1e-3), x.shape[-2] * x.shape[-1]))
        padding = [side % 2 for side in x.shape[2:]]
        x, y = (torch.nn.functional.avg_pool2d(a, kernel_size=2, padding=padding) for a in (x, y))
    relative = sum(weight * ssim_tol(pixels, scales=5) / f for weight, f, pixels in factors)
    return float(relative.max())


def test_ms_ssim_equals_pytorch_msssim(pairs):
    worst, worst_exact = 0.0, 0.0
    for k, (name, ref, dist) in enumerate(pairs):
        x, y = _nchw(ref), _nchw(dist)
        ours = ms_ssim(x, y)
        assert ours.shape == (1,) and 0 <= float(ours) <= 1
        peer = float(pytorch_msssim.ms_ssim(x.float(), y.float(), data_range=255, size_average=False))
        worst = max(worst, abs(float(ours) - peer))
        if k % 2 == 0:  # [-1, 1] values: odd sides are zero-padded before pooling, so the offset matters
            signed_x, signed_y = x.float() / 127.5 - 1, y.float() / 127.5 - 1
            peer = float(pytorch_msssim.ms_ssim(signed_x, signed_y, data_range=2.0, size_average=False))
            worst = max(worst, abs(float(ms_ssim(signed_x, signed_y, data_range=2.0)) - peer))
        if k % 3 == 0:  # float64 on both sides with the same (float64) window: agreement to rounding
            peer = float(pytorch_msssim.ms_ssim(x.double(), y.double(), data_range=255, size_average=False,
                                                win=_exact_window(3)))
            error = abs(float(ms_ssim(x, y, dtype=torch.float64)) - peer)
            worst_exact = max(worst_exact, error / _ms_ssim_tol(x.double(), y.double()))
    print(f"max |ms_ssim diff| float32 {worst:.2e}, float64 {worst_exact:.2e} of its bound")
    assert worst < TOL and worst_exact <= 1.0
    x, y = _nchw(pairs[0][1]), _nchw(pairs[0][2])
    peer = pytorch_msssim.ms_ssim(x.float(), y.float(), data_range=255, weights=[0.2, 0.3, 0.5], size_average=False)
    assert abs(float(ms_ssim(x, y, weights=(0.2, 0.3, 0.5))) - float(peer)) < TOL
    assert len(MS_SSIM_WEIGHTS) == 5


def test_identity_symmetry_and_never_nan(photos):
    x = torch.from_numpy(photos[0][:176, :180]).permute(2, 0, 1)[None]
    y = torch.from_numpy(np.random.default_rng(0).integers(0, 256, x.shape, dtype=np.uint8))
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(x, y)) == float(ssim(y, x))
    assert float(ms_ssim(x, y)) == float(ms_ssim(y, x))
    flat = torch.zeros(2, 3, 170, 170)
    noise = torch.rand(2, 3, 170, 170, generator=torch.Generator().manual_seed(1))
    for value in (ms_ssim(flat, noise, data_range=1.0), ms_ssim(flat, flat + 1, data_range=1.0),
                  ms_ssim(noise, 1 - noise, data_range=1.0), ssim(flat, flat + 1, data_range=1.0)):
        assert torch.isfinite(value).all() and (value >= -1).all()
    assert float(ms_ssim(noise[:1], 1 - noise[:1], data_range=1.0)) == 0.0  # relu(negative cs) = 0, not NaN


def test_ssim_is_differentiable():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    (1 - ssim(x, y, data_range=1.0)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _matlab_ssim_m(a, b):
    """Wang's ssim.m on grayscale float arrays, written out with numpy: f x f box filter ('symmetric' padding,
    kernel centre floor((f + 1) / 2)), every f-th pixel, then the Gaussian SSIM on the valid region."""
    f = max(1, int(np.floor(min(a.shape) / 256 + 0.5)))
    if f > 1:
        before = (f + 1) // 2 - 1
        reduced = []
        for img in (a, b):
            padded = np.pad(img, ((before, f), (before, f)), mode="symmetric")
            box = sum(padded[i:i + img.shape[0], j:j + img.shape[1]] for i in range(f) for j in range(f)) / f ** 2
            reduced.append(box[::f, ::f])
        a, b = reduced
    return _skimage_ssim(a, b, 255, channel_axis=None)


def test_matlab_downsampling_option(photos):
    gray = photos[0].astype(np.float64).mean(axis=2)  # 512 x 512
    rng = np.random.default_rng(3)
    big = np.tile(gray, (2, 2))[:800, :900]  # f = 3
    for a in (gray, gray[:397, :451], big):  # f = 2, f = 2 with odd sides, f = 3
        b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
        ours = ssim(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], data_range=255,
                    matlab_downsample=True)
        f = max(1, int(np.floor(min(a.shape) / 256 + 0.5)))  # its f x f box filter adds f^2 terms
        assert abs(float(ours) - _matlab_ssim_m(a, b)) <= ssim_tol(a.size, extra_terms=f * f)
    small = torch.from_numpy(gray[:200, :200])[None, None]  # f = 1 below 384 px: no change
    assert float(ssim(small, small * 0.9, data_range=255, matlab_downsample=True)) == float(
        ssim(small, small * 0.9, data_range=255))


def test_bad_inputs_are_clear_errors():
    x = torch.rand(2, 3, 170, 170)
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, x[:, :, :-1], data_range=1.0)
    with pytest.raises(ValueError, match="data_range is required"):
        ssim(x, x)
    nan = x.clone()
    nan[0, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ssim(x, nan, data_range=1.0)
    with pytest.raises(ValueError, match="wider than data_range=1"):
        ssim(x * 255, x, data_range=1.0)
    with pytest.warns(UserWarning, match="data_range=1.0"):
        ssim(x, x, data_range=255)
    with pytest.raises(ValueError, match="161x161"):
        ms_ssim(x[:, :, :160], x[:, :, :160], data_range=1.0)
    with pytest.raises(ValueError, match="11x11"):
        ssim(x[:, :, :10], x[:, :, :10], data_range=1.0)
    with pytest.raises(ValueError, match=r"x\[None\]"):
        ssim(x[0], x[0], data_range=1.0)
    with pytest.raises(ValueError, match="positive"):
        ssim(x, x, data_range=0)
    with pytest.raises(TypeError, match="tensor"):
        ssim(object(), object(), data_range=1.0)
    with pytest.raises(ValueError, match="non-negative"):
        ms_ssim(x, x, data_range=1.0, weights=(0.5, -0.5))
