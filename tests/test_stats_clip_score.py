"""CLIP's text tower and clip_score against open_clip on identical (seeded random) weights, and the CLIPScore formula
against torchmetrics' CLIPScore on identical embeddings. Offline: weights are made here, nothing downloads."""
import copy
import warnings

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("ftfy")

from genmetrics.stats import clip_score, clip_tokenize  # noqa: E402
from genmetrics.stats.metrics.clip_score import clip_score_from_embeddings  # noqa: E402
from genmetrics.stats.networks.clip import preprocess_clip  # noqa: E402
from genmetrics.stats.networks.clip_text import (CLIP_TEXT_ARCHS, build_clip_text, clip_text_state_dict,  # noqa: E402
                                                 load_clip_model)
from genmetrics.stats.networks.extractor import EXTRACTORS  # noqa: E402
from genmetrics.stats.networks.weights import WeightsUnavailableError  # noqa: E402

TOL = 1e-4  # the brief's bound: float32 networks, another attention kernel and summation order
PROMPTS = ["a photo of a cat", "A red double-decker bus on a rainy street in London, 1990s!", "",
           "it's 3 o'clock &amp; raining " * 12]  # the last one is longer than the context


def _openai_layout_model(name, seed):
    """open_clip's OpenAI architecture (QuickGELU) with seeded random weights, perturbed so that no LayerNorm is the
    identity, every value representable in float16 (as OpenAI's archives hold them), and the final LayerNorm biases
    chosen so that image and text embeddings share a direction (cosines well above 0, as with trained weights)."""
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
        text_bias = torch.randn(model.ln_final.bias.shape[0])
        shared = text_bias @ model.text_projection
        model.ln_final.bias.copy_(text_bias)
        model.visual.ln_post.bias.copy_(torch.linalg.lstsq(model.visual.proj.T, shared[:, None]).solution[:, 0])
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    return model


@pytest.fixture(scope="module")
def b32(tmp_path_factory):
    """(open_clip model, its state dict file in OpenAI's layout, the same as a float16 TorchScript archive carrying
    OpenAI's non-weight entries input_resolution, context_length, vocab_size)."""
    model = _openai_layout_model("ViT-B-32", seed=0)
    folder = tmp_path_factory.mktemp("clip_b32")
    state_path = folder / "b32_state.pth"
    torch.save(model.state_dict(), state_path)
    scripted = copy.deepcopy(model).half()
    for key, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(scripted, key):
            delattr(scripted, key)  # open_clip keeps some as ints; OpenAI's archives hold them as tensors
        scripted.register_buffer(key, torch.tensor(value))
    archive_path = folder / "b32_archive.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        torch.jit.script(scripted).save(str(archive_path))
    return model, state_path, archive_path


@pytest.fixture(scope="module")
def loaded(b32):
    """Our two towers loaded from each file form, once for the module."""
    _, state_path, archive_path = b32
    return {which: load_clip_model("clip-vit-b-32", weights=str(path), device="cpu")
            for which, path in (("state dict", state_path), ("TorchScript archive", archive_path))}


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (len(PROMPTS), 3, 96, 128), dtype=torch.uint8, generator=generator)


def _reference(model, images, texts):
    """open_clip's image and text embeddings on our preprocessing, and the per-pair-clamped score."""
    with torch.no_grad():
        image = model.encode_image(preprocess_clip(images, 224))
        text = model.encode_text(open_clip.tokenize(texts))
    cosines = torch.nn.functional.cosine_similarity(image.double(), text.double())
    return image, text, float((100 * cosines.clamp(min=0)).mean())


@pytest.mark.parametrize("which", ["state dict", "TorchScript archive"])
def test_b32_equals_open_clip(b32, loaded, images, which):
    """Text embeddings, image embeddings and the score equal open_clip's within 1e-4, read from either file form."""
    ours = loaded[which]
    image, text, expected = _reference(b32[0], images, PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(ours.text(clip_tokenize(PROMPTS)), text, atol=TOL, rtol=0)
        torch.testing.assert_close(ours.image(images)["clip"], image, atol=TOL, rtol=0)
    assert 5 < expected < 100  # the pairs are far from orthogonal: the comparison is not 0 == 0
    assert clip_score(images, PROMPTS, model=ours, batch_size=3) == pytest.approx(expected, abs=TOL)


def test_text_tower_drops_only_padding(loaded):
    """One prompt embedded alone (cut after its own end token) equals the same prompt in a batch with a
    full-length one (77 columns run): the causal mask makes the padding irrelevant."""
    ours = loaded["state dict"]
    tokens = clip_tokenize(PROMPTS)
    with torch.no_grad():
        alone = ours.text(tokens[:1])
        together = ours.text(tokens)[:1]
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)


def test_weights_from_the_argument_the_environment_variable_and_offline_error(b32, images, tmp_path, monkeypatch):
    """Weights resolve as for the image tower: the argument (list of images here), $GENMETRICS_CLIP_VIT_B_32_WEIGHTS,
    then the cache; offline without a cached file the error names the variable."""
    model, state_path, archive_path = b32
    images, prompts = images[:3], PROMPTS[:3]  # short prompts: cheap
    _, _, expected = _reference(model, images, prompts)
    score = clip_score(list(images), prompts, weights=str(archive_path), device="cpu", batch_size=2)
    assert score == pytest.approx(expected, abs=TOL)
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path))
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    monkeypatch.setenv("GENMETRICS_CLIP_VIT_B_32_WEIGHTS", str(state_path))
    assert clip_score(images, prompts, device="cpu") == pytest.approx(expected, abs=TOL)
    monkeypatch.delenv("GENMETRICS_CLIP_VIT_B_32_WEIGHTS")
    with pytest.raises(WeightsUnavailableError, match="GENMETRICS_CLIP_VIT_B_32_WEIGHTS"):
        clip_score(images, prompts, device="cpu")


@pytest.mark.parametrize("name", ["clip-vit-l-14", "clip-vit-l-14-336px"])
def test_large_text_towers_equal_open_clip(name):
    """The L/14 and L/14@336px text towers (width 768, 12 layers, 768-D) load open_clip's text weights in OpenAI's
    layout strictly and give its text embeddings within 1e-4 (random weights, two prompts, CPU)."""
    arch = CLIP_TEXT_ARCHS[name]
    torch.manual_seed(2)
    reference = open_clip.transformer.TextTransformer(
        width=arch.width, heads=arch.heads, layers=arch.layers, output_dim=arch.embed_dim,
        act_layer=open_clip.transformer.QuickGELU).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    ours = build_clip_text(name)
    ours.load_state_dict(clip_text_state_dict(reference.state_dict()), strict=True)
    tokens = clip_tokenize(PROMPTS[:2])
    with torch.no_grad():
        expected = reference(tokens)
        assert expected.shape == (2, 768)
        torch.testing.assert_close(ours(tokens), expected, atol=TOL, rtol=0)


def test_every_listed_clip_model_has_a_text_tower():
    """Each CLIP extractor we list has its text tower, with the release widths (B/32: 512, L/14: 768)."""
    listed = [name for name in EXTRACTORS if name.startswith("clip-")]
    assert sorted(CLIP_TEXT_ARCHS) == sorted(listed)
    assert [(CLIP_TEXT_ARCHS[n].width, CLIP_TEXT_ARCHS[n].embed_dim) for n in listed] == [(512, 512), (768, 768),
                                                                                          (768, 768)]


class _TorchmetricsAdapter(torch.nn.Module):
    """The (model, processor) interface torchmetrics' CLIPScore calls, over embeddings we choose: ``get_image_features``
    and ``get_text_features`` run `image_fn` / `text_fn`."""

    config = None

    def __init__(self, image_fn, text_fn):
        super().__init__()
        self.image_fn, self.text_fn = image_fn, text_fn

    def get_image_features(self, pixel_values):
        return self.image_fn(pixel_values)

    def get_text_features(self, input_ids, attention_mask):
        return self.text_fn(input_ids)


def _processor(images=None, text=None, return_tensors="pt", padding=True):
    if images is not None:
        return {"pixel_values": torch.stack(images)}
    tokens = clip_tokenize(text)
    return {"input_ids": tokens, "attention_mask": (tokens > 0).long()}


def _torchmetrics_score(adapter, images, texts):
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path=lambda: (adapter, _processor))
    metric.update(images, texts)
    return float(metric.compute())


def test_equals_torchmetrics_when_no_pair_is_negative(loaded, images):
    """torchmetrics' CLIPScore run on our towers gives our score: every cosine is positive here."""
    ours = loaded["state dict"]
    adapter = _TorchmetricsAdapter(lambda x: ours.image(x)["clip"], ours.text)
    with torch.no_grad():
        expected = _torchmetrics_score(adapter, images, PROMPTS)
    assert clip_score(images, PROMPTS, model=ours) == pytest.approx(expected, abs=TOL)


def test_clamp_per_pair_differs_from_torchmetrics_clamp_of_the_mean():
    """Cosines 0.5 and -0.3: ours averages 100 max(cos, 0) -> 25; torchmetrics clamps the mean, max(100 * 0.1, 0)
    -> 10. With both cosines positive the two agree."""
    image_emb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    text_emb = torch.tensor([[0.5, np.sqrt(0.75), 0.0], [0.0, -0.3, np.sqrt(0.91)], [0.0, np.sqrt(0.96), 0.2]])
    row_of = {int(clip_tokenize(str(i))[0, 1]): i for i in range(3)}  # the prompt "i" embeds as text_emb[i]
    adapter = _TorchmetricsAdapter(lambda x: x.flatten(1), lambda ids: text_emb[[row_of[int(t)] for t in ids[:, 1]]])
    images = image_emb[:, :, None, None]
    for rows, ours, theirs in (([0, 1], 25.0, 10.0), ([0, 2], 35.0, 35.0)):
        texts = [str(i) for i in rows]
        assert clip_score_from_embeddings(image_emb[rows], text_emb[rows]) == pytest.approx(ours, abs=1e-9)
        assert _torchmetrics_score(adapter, images[rows], texts) == pytest.approx(theirs, abs=1e-5)


def test_mismatched_counts_are_refused(loaded, images):
    """Different numbers of images and texts: ValueError naming both counts, whether the image count is known
    upfront (an array: before any weights are looked for) or only after reading (a generator)."""
    with pytest.raises(ValueError, match="got 4 images and 3 texts"):
        clip_score(images, PROMPTS[:3], weights="/nonexistent/weights.pt")
    ours = loaded["state dict"]
    with pytest.raises(ValueError, match="got 4 images and 5 texts"):
        clip_score((batch for batch in images.split(2)), PROMPTS + ["one more"], model=ours)
    with pytest.raises(ValueError, match="got 2 image embeddings and 3 text embeddings"):
        clip_score_from_embeddings(torch.ones(2, 4), torch.ones(3, 4))


def test_bad_inputs_are_refused():
    text = build_clip_text("clip-vit-b-32")
    with pytest.raises(ValueError, match="integer token ids"):
        text(torch.zeros(2, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must lie in 0..49407"):
        text(torch.full((1, 5), 49408))
    with pytest.raises(ValueError, match="unknown CLIP model 'clip-vit-h-14'"):
        clip_score(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ["x"], model="clip-vit-h-14")
    with pytest.raises(ValueError, match="all zeros"):
        clip_score_from_embeddings(torch.zeros(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match="not a full OpenAI CLIP checkpoint"):
        clip_text_state_dict({"visual.proj": torch.ones(2, 2)})
