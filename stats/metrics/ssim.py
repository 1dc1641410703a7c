"""SSIM and MS-SSIM per image, identical to scikit-image and pytorch-msssim (Wang et al. 2004, 2003).

For images x, y with value range L (``data_range``), local statistics are Gaussian-weighted (window 11x11,
sigma 1.5, normalised to sum 1): means mu_x, mu_y, variances s_x², s_y² and covariance s_xy (population
form, E[x²] - mu², i.e. ``use_sample_covariance=False`` in scikit-image). With C1 = (K1 L)², C2 = (K2 L)²
(K1 = 0.01, K2 = 0.03) and C3 = C2 / 2 the three terms

    luminance l = (2 mu_x mu_y + C1) / (mu_x² + mu_y² + C1)
    contrast  c = (2 s_x s_y + C2) / (s_x² + s_y² + C2)
    structure s = (s_xy + C3) / (s_x s_y + C3)

multiply (exponents 1) to SSIM = l * cs with cs = c * s = (2 s_xy + C2) / (s_x² + s_y² + C2). The SSIM of an
image is the mean of the SSIM map over the *valid* region (the positions where the whole window lies
inside the image, i.e. 5 pixels cropped on each side; no padding), averaged over channels. This is what
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=L, channel_axis=...)`` and ``pytorch_msssim.ssim`` compute.

MS-SSIM (Wang, Simoncelli, Bovik 2003) follows pytorch-msssim exactly: five scales with weights
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333); between scales ``avg_pool2d(kernel_size=2, padding=(H % 2, W % 2))``
(an odd side is zero-padded and the zeros count in the average, pytorch-msssim's convention);
MS-SSIM = prod_{j<5} relu(cs_j)^w_j * relu(ssim_5)^w_5 per channel, then the mean over channels. The ReLU
(pytorch-msssim's convention) keeps a negative cs away from a fractional power, so the result is never NaN.
The smallest side must exceed (11 - 1) * 2**4 = 160 pixels so that the window fits at the fifth scale.

Numerics: images are divided by L (so C1 = K1², C2 = K2²; SSIM is invariant to this scaling) and each
image/channel is centred on the mean of x and y before the second moments are filtered, which keeps the
E[x²] - mu² cancellation harmless in float32 (float64 scikit-image agrees: docs/performance.md; pytorch-msssim's
float32 result is ~1e-5 off). The window is built in float64 (sums to 1 exactly before the cast): a window
summing to 1 + d gives a constant image the variance d mu², not 0. The separable Gaussian filter runs once
per direction over the stacked maps [x, y, x², y², xy] (one depthwise convolution each instead of
pytorch-msssim's ten). ``dtype=torch.float64`` computes in float64 throughout (matches scikit-image to 1e-14).
"""
import math
import warnings

import torch
import torch.nn.functional as F

from ..messages import GenMetricsWarning

__all__ = ["ssim", "ms_ssim", "MS_SSIM_WEIGHTS", "MS_SSIM_MIN_SIZE", "WINDOW_SIZE", "WINDOW_SIGMA", "K1", "K2"]

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1 = 0.01
K2 = 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIZE = (WINDOW_SIZE - 1) * 2 ** 4 + 1  # 161: the smallest side must exceed 160
_CPU_CHUNK_ELEMENTS = 1 << 18


# ---------------------------------------------------------------------------------------------------
# Input validation


def _as_tensor(image, name):
    if not isinstance(image, torch.Tensor):
        try:
            image = torch.as_tensor(image)
        except (TypeError, RuntimeError, ValueError) as error:
            raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(image).__name__}") from error
    return image


def _check_shape(x, y):
    """Both NCHW (or HW for one grayscale image, made (1, 1, H, W)) and of the same shape."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}; "
                         f"resize or crop one of them so that they match")
    if x.ndim == 2:
        return x[None, None], y[None, None]
    if x.ndim == 3:
        raise ValueError(f"got a 3-d input of shape {tuple(x.shape)}, which is ambiguous (CHW or NHW); pass NCHW: "
                         f"x[None] for one CHW image, x[:, None] for a batch of grayscale HxW images")
    if x.ndim != 4:
        raise ValueError(f"x and y must be NCHW batches (or one HxW grayscale image), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x and y are empty (N = 0); pass at least one image")
    if x.numel() == 0:
        raise ValueError(f"x and y hold no pixels (shape {tuple(x.shape)}: no channels or a 0-pixel side); pass "
                         f"images of at least 11x11 pixels with one or more channels")
    return x, y


def _check_data_range(x, y, data_range):
    """The value range L: inferred (255) only for uint8; required for anything else; must be > 0."""
    if data_range is None:
        if x.dtype == torch.uint8 and y.dtype == torch.uint8:
            return 255.0
        raise ValueError(f"data_range is required for {x.dtype}/{y.dtype} input: pass data_range=1.0 for images "
                         f"in [0, 1], 2.0 for [-1, 1], 255 for 8-bit values stored as float (it is inferred "
                         f"only for uint8 tensors)")
    data_range = float(data_range)
    if not math.isfinite(data_range) or data_range <= 0:
        raise ValueError(f"data_range must be a positive number (max - min of the value scale), got {data_range}")
    return data_range


def _check_values(x, y, data_range):
    """No NaN/inf; the values of x and y together span at most data_range (with float tolerance)."""
    if x.is_floating_point():
        for name, image in (("x", x), ("y", y)):
            if not torch.isfinite(image).all():
                raise ValueError(f"{name} contains NaN or infinite values; clean the images before computing SSIM")
    low = float(torch.minimum(x.detach().min(), y.detach().min()))
    high = float(torch.maximum(x.detach().max(), y.detach().max()))
    if high - low > data_range * (1 + 1e-6):
        raise ValueError(f"the images span [{low:g}, {high:g}], wider than data_range={data_range:g}; pass the "
                         f"range of the value scale (e.g. data_range=255 for 0..255 values, 2.0 for [-1, 1])")
    if data_range >= 100 and high - low <= 1:
        warnings.warn(f"data_range={data_range:g} but the images span only [{low:g}, {high:g}]: for images in "
                      f"[0, 1] pass data_range=1.0 (a too large data_range inflates C1, C2 and pushes SSIM to 1)",
                      GenMetricsWarning, stacklevel=4)


def _check_size(x, minimum, what):
    smallest = min(x.shape[-2:])
    if smallest < minimum:
        raise ValueError(f"{what} needs images of at least {minimum}x{minimum} pixels, got {tuple(x.shape[-2:])}; "
                         f"upsample the images or use a smaller metric")


def _prepare(x, y, data_range, dtype):
    x, y = _as_tensor(x, "x"), _as_tensor(y, "y")
    x, y = _check_shape(x, y)
    data_range = _check_data_range(x, y, data_range)
    _check_values(x, y, data_range)
    if dtype is None:
        dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    return x.to(dtype) / data_range, y.to(dtype) / data_range


# ---------------------------------------------------------------------------------------------------
# Computation


def _gaussian_1d(dtype, device):
    coords = torch.arange(WINDOW_SIZE, dtype=torch.float64) - WINDOW_SIZE // 2
    window = torch.exp(-coords ** 2 / (2 * WINDOW_SIGMA ** 2))
    return (window / window.sum()).to(dtype=dtype, device=device)


def _filter_valid(maps):
    """Separable Gaussian filter of (..., H, W) keeping the valid region (..., H - 10, W - 10).

    All maps go through one depthwise (grouped) convolution per direction as the channels of a single
    batch element, the fastest layout of PyTorch's CPU convolution here.
    """
    shape = maps.shape
    count = maps[..., 0, 0].numel()
    window = _gaussian_1d(maps.dtype, maps.device)
    flat = maps.reshape(1, count, shape[-2], shape[-1])
    flat = F.conv2d(flat, window.view(1, 1, 1, -1).expand(count, 1, 1, WINDOW_SIZE), groups=count)
    flat = F.conv2d(flat, window.view(1, 1, -1, 1).expand(count, 1, WINDOW_SIZE, 1), groups=count)
    return flat.reshape(*shape[:-2], *flat.shape[-2:])


def _ssim_and_cs(x, y):
    """Per (image, channel) means of the SSIM map and the cs map over the valid region, for x, y scaled by L.

    Returns two (N, C) tensors. Channels are independent, so the (N * C) planes are processed in chunks;
    on the CPU a chunk holds about ``_CPU_CHUNK_ELEMENTS`` pixels so that its dozen temporary maps stay in
    cache (the computation is memory bound: one pass over the whole batch is several times slower).
    """
    n, c, height, width = x.shape
    planes_x, planes_y = x.reshape(n * c, height, width), y.reshape(n * c, height, width)
    step = n * c if x.device.type != "cpu" else max(1, _CPU_CHUNK_ELEMENTS // (height * width))
    parts = [_planes_ssim_and_cs(planes_x[i:i + step], planes_y[i:i + step]) for i in range(0, n * c, step)]
    return torch.cat([p[0] for p in parts]).view(n, c), torch.cat([p[1] for p in parts]).view(n, c)


def _planes_ssim_and_cs(x, y):
    """(P,) means of the SSIM and cs maps of P planes (P, H, W); C1 = K1², C2 = K2² (images divided by L)."""
    c1, c2 = K1 ** 2, K2 ** 2
    shift = (x.mean(dim=(-2, -1), keepdim=True) + y.mean(dim=(-2, -1), keepdim=True)) / 2
    x, y = x - shift, y - shift
    mu_x, mu_y, xx, yy, xy = _filter_valid(torch.stack([x, y, x * x, y * y, x * y]))
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    mu_x, mu_y = mu_x + shift, mu_y + shift
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return (luminance * cs_map).mean(dim=(-2, -1)), cs_map.mean(dim=(-2, -1))


def _matlab_downsample(image):
    """Wang's ssim.m: f = max(1, round(min(H, W) / 256)); f x f box filter ('symmetric', 'same'), every f-th pixel.

    MATLAB's imfilter centres an f-tap kernel at tap floor((f + 1) / 2) (1-based), so the output pixel i
    (0-based) averages input pixels i - floor((f - 1) / 2) ... i + f - 1 - floor((f - 1) / 2), mirrored at the
    borders ('symmetric' repeats the edge pixel); then pixels 0, f, 2f, ... are kept.
    """
    factor = max(1, math.floor(min(image.shape[-2:]) / 256 + 0.5))
    if factor == 1:
        return image
    before = (factor - 1) // 2
    for dim in (-2, -1):
        n = image.shape[dim]
        starts = torch.arange(0, n, factor, device=image.device) - before
        taps = starts[:, None] + torch.arange(factor, device=image.device)[None, :]
        taps = torch.where(taps < 0, -taps - 1, taps)
        taps = torch.where(taps >= n, 2 * n - 1 - taps, taps)
        image = image.index_select(dim, taps.reshape(-1))
        shape = list(image.shape)
        dim_index = dim % image.ndim
        shape[dim_index:dim_index + 1] = [starts.numel(), factor]
        image = image.reshape(shape).mean(dim=dim_index + 1)
    return image


def ssim(x, y, data_range=None, matlab_downsample=False, dtype=None):
    """Per-image SSIM of two batches -> tensor (N,) (mean over the valid region and over channels).

    x, y: NCHW tensors or arrays of the same shape (or one HxW grayscale image), any channel count.
    data_range: L, the span of the value scale (1.0 for [0, 1], 2.0 for [-1, 1], 255 for 0..255); required
        except for uint8 input (then 255). Too small a value is an error; a far too large one (255 for
        [0, 1] images) only warns, since the data cannot prove it.
    matlab_downsample: first downsample as Wang's reference ``ssim.m`` does (factor max(1, round(min(H, W)/256)),
        box average); off by default, since scikit-image, pytorch-msssim and torchmetrics do not downsample.
    dtype: computation and result dtype; default float32 (float64 when an input is float64).
    The images must be at least 11x11 (after the optional downsampling).
    """
    x, y = _prepare(x, y, data_range, dtype)
    if matlab_downsample:
        x, y = _matlab_downsample(x), _matlab_downsample(y)
    _check_size(x, WINDOW_SIZE, "SSIM (11x11 window)")
    ssim_per_channel, _ = _ssim_and_cs(x, y)
    return ssim_per_channel.mean(dim=1)


def ms_ssim(x, y, data_range=None, weights=None, dtype=None):
    """Per-image MS-SSIM of two batches -> tensor (N,), exactly as ``pytorch_msssim.ms_ssim(size_average=False)``.

    x, y, data_range, dtype as for :func:`ssim`. weights: the per-scale exponents, default
    :data:`MS_SSIM_WEIGHTS` (Wang et al. 2003); their count is the number of scales. The smallest side must
    exceed (11 - 1) * 2**(scales - 1) pixels (160 for five scales). Never NaN (see module docstring).
    """
    weights = MS_SSIM_WEIGHTS if weights is None else tuple(float(w) for w in weights)
    if not weights or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"weights must be one non-negative exponent per scale, got {weights}; "
                         f"the default is MS_SSIM_WEIGHTS = {MS_SSIM_WEIGHTS}")
    x, y = _prepare(x, y, data_range, dtype)
    minimum = (WINDOW_SIZE - 1) * 2 ** (len(weights) - 1) + 1
    _check_size(x, minimum, f"MS-SSIM with {len(weights)} scales (smallest side > {minimum - 1})")
    factors = []
    for scale in range(len(weights)):
        ssim_per_channel, cs = _ssim_and_cs(x, y)
        if scale < len(weights) - 1:
            factors.append(torch.relu(cs))
            padding = (x.shape[-2] % 2, x.shape[-1] % 2)
            x, y = F.avg_pool2d(x, kernel_size=2, padding=padding), F.avg_pool2d(y, kernel_size=2, padding=padding)
    factors.append(torch.relu(ssim_per_channel))
    exponents = torch.tensor(weights, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return torch.prod(torch.stack(factors) ** exponents, dim=0).mean(dim=1)
