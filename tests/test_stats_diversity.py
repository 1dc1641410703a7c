"""Diversity: mean pairwise LPIPS / MS-SSIM over seeded random pairs of distinct samples."""
import numpy as np
import pytest
import torch
import torchvision

from genmetrics.stats import LPIPS, diversity_pairs, lpips_diversity, ms_ssim, ms_ssim_diversity, pairwise_diversity


def test_pairs_are_distinct_seeded_and_cover_all_indices():
    first, second = diversity_pairs(5, 400, seed=3)
    assert (first != second).all() and first.min() == 0 and first.max() == 4 and second.max() == 4
    again = diversity_pairs(5, 400, seed=3)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    assert not torch.equal(first, diversity_pairs(5, 400, seed=4)[0])
    with pytest.raises(ValueError, match="at least 2 samples"):
        diversity_pairs(1, 10)
    with pytest.raises(ValueError, match="pairs must be at least 1"):
        diversity_pairs(3, 0)


def test_pairwise_diversity_is_the_mean_over_the_drawn_pairs():
    values = torch.arange(6, dtype=torch.float64)
    score = pairwise_diversity(values, lambda a, b: (a - b).abs(), pairs=50, seed=1, batch_size=7)
    first, second = diversity_pairs(6, 50, seed=1)
    expected = (values[first] - values[second]).abs()
    assert score.mean == pytest.approx(float(expected.mean()), abs=1e-12)
    assert score.std == pytest.approx(float(expected.std()), abs=1e-12)
    assert (score.pairs, score.seed) == (50, 1)


def test_ms_ssim_diversity_detects_mode_collapse(photos):
    crops = [torch.from_numpy(p[:176, :176].copy()).permute(2, 0, 1) for p in photos[:4]]
    varied = torch.stack(crops)
    collapsed = torch.stack([crops[0]] * 4)
    diverse, same = ms_ssim_diversity(varied, pairs=6, seed=0), ms_ssim_diversity(collapsed, pairs=6, seed=0)
    assert same.mean == pytest.approx(1.0, abs=1e-6) and same.std == pytest.approx(0.0, abs=1e-6)
    assert diverse.mean < 0.5  # different photos
    first, second = diversity_pairs(4, 6, seed=0)
    assert diverse.mean == pytest.approx(float(ms_ssim(varied[first], varied[second]).double().mean()), abs=1e-12)


def test_lpips_diversity(tmp_path):
    torch.manual_seed(0)
    state = {k: v for k, v in torchvision.models.squeezenet1_1(weights=None).state_dict().items()
             if k.startswith("features.")}
    torch.save(state, tmp_path / "squeeze.pth")
    model = LPIPS("squeeze", backbone_weights=str(tmp_path / "squeeze.pth"), normalize=True)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((4, 3, 32, 32))).float()
    diverse = lpips_diversity(images, model, pairs=8, seed=2)
    assert diverse.mean > 0 and (diverse.pairs, diverse.seed) == (8, 2)
    collapsed = lpips_diversity(images[:1].expand(4, -1, -1, -1), model, pairs=8, seed=2)
    assert collapsed.mean == 0.0
