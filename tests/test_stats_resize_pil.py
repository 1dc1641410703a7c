"""The matrix form of PIL's bicubic resize against PIL itself ('F' images, clean-fid's clean resizer)."""
import numpy as np
import pytest
import torch
from PIL import Image
from tolerances import EPS32, gamma, sum_tol

from genmetrics.stats.images.preprocess import preprocess, resize_clean
from genmetrics.stats.images.resize_pil import pil_bicubic_weights, pil_vertical_first, resize_pil_bicubic

# input (height, width) -> 299x299: upscale, antialiased downscale, unchanged, non-square, and one where
# Pillow >= 13 runs the vertical pass first
SIZES = [(32, 32), (64, 64), (256, 256), (512, 512), (1024, 1024), (299, 299), (37, 61), (61, 37), (1000, 17)]
ULP_255 = float(np.spacing(np.float32(255)))  # float32 spacing on [128, 256): 1.5e-5 grey levels


def _float32_tol(shape, out=(299, 299), magnitude=255.0):
    """Bound on |float32 matrix form - PIL| for (H, W) inputs of values in [0, magnitude].

    Per pass (rows of W with at most k non-zero weights, sum|w| <= a): the weights cast to float32 (u |w|
    each) and the float32 sum of k products (gamma_k a |v|) on our side, PIL's float64 sum stored as float32
    (u |v|) on its side; the second pass carries the first one's error times a. Both sides are in the model,
    so no factor 2 (5.7e-4 grey levels for upscales, 6.7e-4 for 1024 px; measured <= 1.1e-4)."""
    err, mag = 0.0, magnitude
    for in_size, out_size in zip(shape, out):
        if in_size == out_size:
            continue  # the pass is skipped on both sides
        w = pil_bicubic_weights(in_size, out_size)
        k, a = int((w != 0).sum(axis=1).max()), float(np.abs(w).sum(axis=1).max())
        err = err * a + (gamma(k, EPS32) + EPS32) * a * mag
        mag *= a
    return err


def _random(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32)


def _smooth(shape):
    h, w = shape[-2:]
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    plane = 127.5 + 120 * np.sin(7 * x + 3 * y) * np.cos(5 * y) + 7 * (x - y)
    return np.broadcast_to(plane, shape).astype(np.float32)


def _pil(planes, size=299):
    """PIL 'F' bicubic + clip of each (H, W) plane of (..., H, W): resize_clean's per-channel operation."""
    flat = planes.reshape((-1,) + planes.shape[-2:])
    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32), mode="F").resize(
        (size, size), resample=Image.BICUBIC)).clip(0, 255) for p in flat]
    return np.stack(resized).reshape(planes.shape[:-2] + (size, size))


@pytest.mark.parametrize("in_size,out_size", [(32, 299), (299, 299), (512, 299), (1024, 299), (61, 299), (7, 3)])
def test_weights_are_pillows_coefficients(in_size, out_size):
    """Row j of an identity image resized horizontally by PIL is column j of the weight matrix (float32)."""
    weights = pil_bicubic_weights(in_size, out_size)
    assert weights.shape == (out_size, in_size) and weights.dtype == np.float64
    assert np.abs(weights.sum(axis=1) - 1).max() < 1e-14
    identity = Image.fromarray(np.eye(in_size, dtype=np.float32), mode="F")
    pil_columns = np.asarray(identity.resize((out_size, in_size), resample=Image.BICUBIC))
    assert np.array_equal(pil_columns, weights.T.astype(np.float32))


def test_weights_closed_form():
    """Unchanged size: the identity (k(0) = 1, k(±1) = k(±2) = 0). 2x downscale: support 4, stretched kernel."""
    assert np.array_equal(pil_bicubic_weights(5, 5), np.eye(5))
    w = pil_bicubic_weights(8, 4)
    # output pixel 1 has centre 3.0: taps 0..6 at offsets (j + 0.5 - 3) / 2 = -1.25, -0.75, ..., 1.75
    def kernel(t, a=-0.5):
        t = abs(t)
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1 if t < 1 else a * (t ** 3 - 5 * t ** 2 + 8 * t - 4)

    raw = np.array([kernel((j + 0.5 - 3.0) / 2) for j in range(7)])
    # 7 terms summed and one division, on both sides
    np.testing.assert_allclose(w[1, :7], raw / raw.sum(), rtol=0, atol=sum_tol(8, np.abs(raw).sum()) / raw.sum())
    assert w[1, 7] == 0


@pytest.mark.parametrize("shape", SIZES)
def test_float32_form_within_1e_3_grey_levels_of_pil(shape):
    for images in (_random((2, 3) + shape), _smooth((1, 3) + shape)):
        ours = resize_pil_bicubic(torch.from_numpy(images), 299)
        assert ours.dtype == torch.float32 and ours.shape == images.shape[:2] + (299, 299)
        assert float((ours - torch.from_numpy(_pil(images))).abs().max()) <= _float32_tol(shape)  # required: 1e-3


@pytest.mark.parametrize("shape", SIZES)
def test_float64_form_is_pils_arithmetic(shape):
    """float64 sums rounded to float32 after each pass, in Pillow's pass order: PIL's values, at most a
    unit in the last place apart where differently ordered float64 sums round to different float32."""
    images = _random((1, 3) + shape, seed=1)
    ours = resize_pil_bicubic(torch.from_numpy(images), 299, dtype=torch.float64).numpy()
    reference = _pil(images)
    assert np.abs(ours - reference).max() <= ULP_255
    assert (ours != reference).mean() < 1e-3


def test_pass_order_follows_the_installed_pillow():
    """A tall image shrunk more in height: the other pass order rounds ~25 % of the pixels differently."""
    images = _random((1, 1, 1000, 17), seed=2)
    ours = resize_pil_bicubic(torch.from_numpy(images), 299, dtype=torch.float64).numpy()
    assert (ours != _pil(images)).mean() < 1e-3
    assert not pil_vertical_first(37, 61, 299, 299) and not pil_vertical_first(299, 17, 299, 299)


def test_non_square_output_and_uint8_input():
    images = _random((1, 2, 45, 70), seed=3)
    ours = resize_pil_bicubic(torch.from_numpy(images).to(torch.uint8), (120, 33))
    reference = [np.asarray(Image.fromarray(p, mode="F").resize((33, 120), Image.BICUBIC)).clip(0, 255)
                 for p in images[0]]
    assert ours.shape == (1, 2, 120, 33)
    assert float((ours[0] - torch.from_numpy(np.stack(reference))).abs().max()) <= _float32_tol((45, 70), (120, 33))


@pytest.mark.parametrize("value", [0.0, 0.5, 100.25, 255.0])
def test_constant_image_stays_constant(value):
    for shape in [(32, 32), (1024, 1024), (37, 61)]:
        images = torch.full((1, 1) + shape, value)
        # (1.07e-4 at 255 with OPENBLAS_CORETYPE=Prescott MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=default,
        # one thread: it was <= 1e-4)
        assert float((resize_pil_bicubic(images, 299) - value).abs().max()) <= _float32_tol(shape, magnitude=value)
        assert torch.equal(resize_pil_bicubic(images, 299, dtype=torch.float64), torch.full((1, 1, 299, 299), value))


def test_clipped_to_0_255_and_input_untouched():
    """Bicubic overshoots at edges (negative lobes); like resize_clean the result is clipped."""
    images = torch.zeros(1, 1, 40, 40)
    images[..., 20:] = 255.0
    before = images.clone()
    out = resize_pil_bicubic(images, 299)
    assert float(out.min()) == 0.0 and float(out.max()) == 255.0
    assert torch.equal(images, before)
    same = resize_pil_bicubic(images, 40)
    assert torch.equal(same, images) and same.data_ptr() != images.data_ptr()


def test_empty_batch_and_bad_arguments():
    assert resize_pil_bicubic(torch.zeros(0, 3, 50, 60), 299).shape == (0, 3, 299, 299)
    with pytest.raises(ValueError, match="size"):
        resize_pil_bicubic(torch.zeros(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="dtype"):
        resize_pil_bicubic(torch.zeros(1, 3, 8, 8), 4, dtype=torch.float16)
    with pytest.raises(ValueError, match="in_size"):
        pil_bicubic_weights(0, 4)
    with pytest.raises(ValueError, match="backend"):
        resize_clean(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), backend="opencv")


def test_resize_clean_backends_on_the_cpu():
    """Default on the CPU: PIL, unchanged. backend="torch": the matrix form, within 1e-4 grey levels."""
    images = torch.from_numpy(_random((2, 3, 37, 61), seed=4)).to(torch.uint8)
    pil = resize_clean(images)
    assert torch.equal(pil, resize_clean(images, backend="pil"))
    assert torch.equal(pil, torch.from_numpy(_pil(images.numpy().astype(np.float32))))
    torch_form = resize_clean(images, backend="torch")
    assert torch_form.dtype == torch.float32 and float((torch_form - pil).abs().max()) <= _float32_tol((37, 61))
    floats = resize_clean(images.float() / 255, backend="torch")
    # x / 255 * 255 is not always x in float32: two more roundings of the input (2u 255, through two passes)
    assert float((floats - pil).abs().max()) <= _float32_tol((37, 61)) + 2 * 255 * EPS32


def test_preprocess_clean_keeps_pil_on_the_cpu():
    images = torch.from_numpy(_random((2, 3, 64, 48), seed=5)).to(torch.uint8)
    expected = (resize_clean(images, backend="pil") - 128) / 128
    assert torch.equal(preprocess(images, "clean"), expected)
    assert torch.equal(preprocess(images, "clean", device="cpu"), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_preprocess_clean_resizes_on_cuda():
    images = torch.from_numpy(_random((2, 3, 256, 200), seed=6)).to(torch.uint8)
    expected = (resize_clean(images, backend="pil") - 128) / 128
    on_gpu = preprocess(images, "clean", device="cuda")
    assert on_gpu.device.type == "cuda"
    assert float((on_gpu.cpu() - expected).abs().max()) * 128 <= 1e-3
    assert resize_clean(images.cuda()).device.type == "cuda"
    previous = torch.backends.cuda.matmul.allow_tf32
    try:  # TF32 switched on by the user must not reach the resize (it would cost ~0.1 grey levels)
        torch.backends.cuda.matmul.allow_tf32 = True
        again = resize_pil_bicubic(images.cuda().float(), 299).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert float((again - resize_clean(images, backend="pil")).abs().max()) <= 1e-3
