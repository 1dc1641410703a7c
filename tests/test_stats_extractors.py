"""DINOv2 and CLIP extractors equal the reference architectures with identical random weights, resize and
normalisation included: torch-fidelity's FeatureExtractorCLIP (its in-repo CLIP model) and
FeatureExtractorDinoV2's preprocessing around a timm DINOv2 ViT (torch-fidelity itself fetches the DINOv2 code
from torch.hub, which is not reachable offline). Tiny configurations (width 64-128, depth 2) for the forward
passes; the real configurations are checked by parameter names and shapes on the meta device."""
import numpy as np
import pytest
import torch

from genmetrics.stats.networks.clip import CLIP_ARCHS, ClipArch, ClipVisual, build_clip, clip_state_dict, preprocess_clip
from genmetrics.stats.networks.dinov2 import (DINOV2_ARCHS, DinoV2, DinoV2Arch, build_dinov2, interpolate_pos_embed,
                                     preprocess_dinov2)

timm = pytest.importorskip("timm")
from timm.layers import SwiGLUPacked  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402
from torch_fidelity import feature_extractor_clip as tf_clip  # noqa: E402
from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2  # noqa: E402

RTOL = 1e-5


def randomize(module, seed):
    """Every parameter drawn from N(0, 0.3^2) (LayerScale gammas included, so no block is negligible)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return module


def assert_close(ours, theirs):
    ours, theirs = ours.double(), theirs.double()
    scale = theirs.abs().max().item()
    assert (ours - theirs).abs().max().item() <= RTOL * scale, (ours - theirs).abs().max().item() / scale


def images(seed, shapes=((37, 50), (37, 50))):
    rng = np.random.default_rng(seed)
    h, w = shapes[0]
    return torch.from_numpy(rng.integers(0, 256, size=(len(shapes), 3, h, w), dtype=np.uint8))


def timm_dinov2(dim, depth, heads, img_size, swiglu=False):
    extra = dict(mlp_ratio=5.5, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU) if swiglu else {}
    return VisionTransformer(img_size=img_size, patch_size=14, embed_dim=dim, depth=depth, num_heads=heads,
                             init_values=1e-5, num_classes=0, global_pool="token", **extra).eval()


def ours_from_timm(model, arch, grid):
    ours = DinoV2(arch, grid=grid)
    state = dict(model.state_dict())
    if arch.ffn == "swiglu":
        state = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v for k, v in state.items()}
    state["mask_token"] = torch.zeros(1, arch.dim)
    ours.load_state_dict(state, strict=True)
    return ours.eval()


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_dinov2_body_equals_timm(ffn):
    """Same grid (no position interpolation): 70 px input, 5 x 5 patches."""
    theirs = randomize(timm_dinov2(64, 2, 4, 70, swiglu=ffn == "swiglu"), seed=1)
    ours = ours_from_timm(theirs, DinoV2Arch(64, 2, 4, ffn), grid=5)
    x = torch.randn(3, 3, 70, 70)
    with torch.no_grad():
        assert_close(ours(x)["dinov2"], theirs(x))


def original_interpolation(pos_embed, grid):
    """The DINOv2 release code's interpolate_pos_encoding, written out: bicubic, scale (grid + 0.1) / M."""
    side = int((pos_embed.shape[1] - 1) ** 0.5)
    patches = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    factor = float((grid + 0.1) / side)
    patches = torch.nn.functional.interpolate(patches, scale_factor=(factor, factor), mode="bicubic")
    return torch.cat([pos_embed[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


@pytest.mark.parametrize("arch", [DinoV2Arch(64, 2, 4), DINOV2_ARCHS["dinov2-vit-s-14"]], ids=["tiny", "vit-s-14"])
def test_dinov2_pipeline_equals_torch_fidelity_preprocessing_around_timm(arch):
    """uint8 images of another size -> TF1 bilinear 224 px, ImageNet normalisation, 37 -> 16 position grid;
    a tiny ViT and the real ViT-S/14 configuration."""
    release = randomize(timm_dinov2(arch.dim, arch.depth, arch.heads, 518), seed=2)
    ours = ours_from_timm(release, arch, grid=37)
    at_224 = timm_dinov2(arch.dim, arch.depth, arch.heads, 224)
    state = dict(release.state_dict())
    state["pos_embed"] = original_interpolation(release.pos_embed.detach(), 16)
    at_224.load_state_dict(state)
    reference = FeatureExtractorDinoV2.__new__(FeatureExtractorDinoV2)
    torch.nn.Module.__init__(reference)
    reference.features_list, reference.feature_extractor_internal_dtype, reference.model = ["dinov2"], torch.float32, at_224
    x = images(3, shapes=((150, 97), (150, 97)))
    with torch.no_grad():
        (expected,) = reference(x)
        assert_close(ours(preprocess_dinov2(x))["dinov2"], expected)
        assert_close(ours(preprocess_dinov2(x.float() / 255.0))["dinov2"], expected)  # float [0, 1] input


def test_dinov2_interpolation_is_the_release_one():
    pos = torch.randn(1, 37 * 37 + 1, 8)
    assert torch.equal(interpolate_pos_embed(pos, 16, 16), original_interpolation(pos, 16))
    assert interpolate_pos_embed(pos, 37, 37) is pos


@pytest.mark.parametrize("name, timm_name", [
    ("dinov2-vit-s-14", "vit_small_patch14_dinov2"), ("dinov2-vit-b-14", "vit_base_patch14_dinov2"),
    ("dinov2-vit-l-14", "vit_large_patch14_dinov2"), ("dinov2-vit-g-14", "vit_giant_patch14_dinov2")])
def test_dinov2_release_shapes(name, timm_name):
    """Parameter names and shapes of the real configurations = timm's (renamed as the release files are)."""
    with torch.device("meta"):
        ours = build_dinov2(name)
        theirs = timm.create_model(timm_name, pretrained=False, num_classes=0)
    renamed = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3") if DINOV2_ARCHS[name].ffn == "swiglu"
               else k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    renamed["mask_token"] = (1, DINOV2_ARCHS[name].dim)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == renamed


TINY_CLIP = ClipArch(resolution=32, patch=8, width=128, layers=2, embed_dim=48)


def torch_fidelity_clip(arch, seed):
    """torch-fidelity's extractor around its in-repo CLIP model built by its build_model from an OpenAI-layout
    state dict (weights rounded to float16 as build_model does); returns (extractor, state dict)."""
    visual = tf_clip.CLIPVisual(arch.embed_dim, arch.resolution, arch.layers, arch.width, arch.patch)
    randomize(visual, seed)
    state = {k: v.half().float() for k, v in visual.state_dict().items()}
    full = dict(state, text_projection=torch.zeros(16, arch.embed_dim), logit_scale=torch.zeros(()))
    reference = tf_clip.FeatureExtractorCLIP.__new__(tf_clip.FeatureExtractorCLIP)
    torch.nn.Module.__init__(reference)
    reference.model = tf_clip.build_model(dict(full), torch.float32)
    reference.features_list, reference.feature_extractor_internal_dtype = ["clip"], torch.float32
    reference.resolution = reference.model.visual.input_resolution
    return reference, full


@pytest.mark.parametrize("arch", [TINY_CLIP, CLIP_ARCHS["clip-vit-b-32"]], ids=["tiny", "vit-b-32"])
def test_clip_equals_torch_fidelity(arch):
    """A tiny ViT and the real ViT-B/32 configuration, uint8 images of another size."""
    reference, full = torch_fidelity_clip(arch, seed=4)
    ours = ClipVisual(arch).eval()
    ours.load_state_dict(clip_state_dict(full), strict=True)
    x = images(5, shapes=((45, 61), (45, 61), (45, 61)))
    with torch.no_grad():
        (expected,) = reference(x)
        out = ours(preprocess_clip(x, arch.resolution))
    assert_close(out["clip"], expected)
    assert_close(out["clip_l2"], expected / expected.norm(dim=1, keepdim=True))


def test_clip_weights_read_from_a_torchscript_archive(tmp_path):
    """A TorchScript file holding `visual` (as OpenAI's archives do) is read without running its code."""
    from genmetrics.stats.networks.torchscript_tensors import read_torchscript_tensors

    reference, full = torch_fidelity_clip(TINY_CLIP, seed=6)

    class Holder(torch.nn.Module):
        def __init__(self, visual):
            super().__init__()
            self.visual = visual

        def forward(self, x):
            return self.visual(x)

    path = str(tmp_path / "ViT-tiny.pt")
    example = torch.randn(1, 3, 32, 32)
    torch.jit.trace(Holder(reference.model.visual).half().float(), example).save(path)
    ours = ClipVisual(TINY_CLIP).eval()
    ours.load_state_dict(clip_state_dict(read_torchscript_tensors(path)), strict=True)
    x = images(7, shapes=((32, 32), (32, 32)))
    with torch.no_grad():
        assert_close(ours(preprocess_clip(x, 32))["clip"], reference(x)[0])


@pytest.mark.parametrize("name", sorted(CLIP_ARCHS))
def test_clip_release_shapes(name):
    """Parameter names and shapes of the real configurations = torch-fidelity's CLIPVisual's ``visual.*``."""
    arch = CLIP_ARCHS[name]
    with torch.device("meta"):
        ours = build_clip(name)
        theirs = tf_clip.CLIPVisual(arch.embed_dim, arch.resolution, arch.layers, arch.width, arch.patch)
    expected = {k[len("visual."):]: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected


def test_wrong_input_shapes_are_refused_in_one_line():
    with pytest.raises(ValueError, match="multiples of 14") as error:
        DinoV2(DinoV2Arch(64, 1, 4), grid=2)(torch.zeros(1, 3, 30, 28))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="preprocess_clip"):
        ClipVisual(TINY_CLIP)(torch.zeros(1, 3, 31, 32))
    with pytest.raises(ValueError, match="unknown DINOv2 model"):
        build_dinov2("dinov2-vit-x-14")
    with pytest.raises(ValueError, match="unknown CLIP model"):
        build_clip("clip-rn50")
