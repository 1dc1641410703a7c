"""Feature extractors beyond Inception with seeded random weights in their release files' layouts."""
import pytest
import torch

__all__ = ["dinov2_file"]


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory):
    """A DINOv2 ViT-S/14 state dict (the release file's layout) with seeded random weights."""
    from genmetrics.stats.networks.dinov2 import build_dinov2

    torch.manual_seed(0)
    network = build_dinov2("dinov2-vit-s-14")
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("w") / "dinov2_vits14_pretrain.pth"
    torch.save(network.state_dict(), path)
    return str(path)
