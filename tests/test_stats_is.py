"""Inception Score: equals torch-fidelity and torchmetrics on identical logits/probabilities; bad input."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import SAFETY, gamma
from torch_fidelity.metric_isc import isc_features_to_metric

from genmetrics.stats import inception_score, inception_score_from_logits


@pytest.fixture(scope="module")
def logits():
    # Peaked, varied predictions over 1008 classes, like the FID Inception's classifier on real images.
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, size=(103, 1008))
    z[np.arange(103), rng.integers(0, 1008, size=103)] += 12.0
    return torch.from_numpy(z)


def _fidelity(z, splits, shuffle, seed=2020):
    out = isc_features_to_metric(z, splits=splits, shuffle=shuffle, rng_seed=seed)
    return out["inception_score_mean"], out["inception_score_std"]


@pytest.mark.parametrize("splits", [1, 10, 7])
def test_equals_torch_fidelity_in_order(logits, splits):
    mean, std = inception_score_from_logits(logits, splits=splits)
    ref_mean, ref_std = _fidelity(logits, splits, shuffle=False)
    assert mean == pytest.approx(ref_mean, rel=1e-6)
    assert std == pytest.approx(ref_std, rel=1e-6, abs=1e-12)
    # Probabilities in, same result (0 * log 0 handled).
    assert inception_score(logits.softmax(dim=1).numpy(), splits=splits) == pytest.approx((mean, std), rel=1e-6)


def test_equals_torch_fidelity_default_shuffle(logits):
    assert inception_score_from_logits(logits, splits=10, shuffle_seed=2020) == pytest.approx(
        _fidelity(logits, 10, shuffle=True, seed=2020), rel=1e-6)


def test_equals_torchmetrics_on_the_same_permutation(logits):
    from torchmetrics.image.inception import InceptionScore

    z = logits[:100]  # torchmetrics splits with torch.chunk: equal to ours when N is a multiple of splits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will save all extracted features in buffer"
        metric = InceptionScore(feature=torch.nn.Identity(), splits=10)
        metric.update(z)
    torch.manual_seed(11)
    tm_mean, tm_std = (float(v) for v in metric.compute())
    torch.manual_seed(11)
    mean, std = inception_score_from_logits(z[torch.randperm(100)], splits=10)
    assert mean == pytest.approx(tm_mean, rel=1e-6)
    assert std * np.sqrt(10 / 9) == pytest.approx(tm_std, rel=1e-6)  # torchmetrics: ddof=1


def test_closed_forms():
    # One-hot predictions spread evenly over C classes: IS = C; identical predictions: IS = 1.
    one_hot = np.eye(8)[np.arange(40) % 8]
    assert inception_score(one_hot, splits=5) == pytest.approx((8.0, 0.0))
    assert inception_score(np.full((20, 8), 1 / 8), splits=2) == pytest.approx((1.0, 0.0))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30), classes=st.integers(2, 20), splits=st.integers(1, 5))
def test_property_bounded_by_one_and_number_of_classes(seed, n, classes, splits):
    if n < splits:
        return
    z = torch.from_numpy(np.random.default_rng(seed).normal(0, 5, size=(n, classes)))
    mean, std = inception_score_from_logits(z, splits=splits)
    assert 1.0 - 1e-9 <= mean <= classes + 1e-9 and std >= 0


@pytest.mark.parametrize(
    "probs, message",
    [
        (np.full((4, 3), 0.5), "must sum to 1.*inception_score_from_logits"),
        (np.array([[1.5, -0.5], [0.5, 0.5]]), "negative entries"),
        (np.array([[np.nan, 1.0]]), "NaN or Inf"),
        (np.zeros((0, 3)), "empty"),
        (np.ones(3) / 3, "2-D"),
        (np.ones((3, 2)) / 2, "at least one sample per split: got 3 samples for 10 splits"),
    ],
)
def test_bad_inputs_are_clear_errors(probs, message):
    with pytest.raises(ValueError, match=message):
        inception_score(probs)


def _is_tol(logits):
    """Bound on the difference of two float64 computations of the split scores exp(mean_i KL(p_i || q)):
    a KL is a sum over C classes after a log-softmax over C, within gamma_{C + N} sum_c p_c (|log p_c| +
    |log q_c| + 1) (q: the mean prediction), and exp turns that absolute error into a relative one; the std
    of the split scores moves by at most twice the largest score's error."""
    p = torch.softmax(logits.double(), dim=1)
    log_p, log_q = torch.log_softmax(logits.double(), dim=1), p.mean(dim=0).log()
    magnitude = float((p * (log_p.abs() + log_q.abs() + 1)).sum(dim=1).max())
    largest = float(torch.exp((p * (log_p - log_q)).sum(dim=1).max()))
    return SAFETY * 2 * gamma(logits.shape[1] + logits.shape[0]) * magnitude * largest


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu(logits):
    # Another reduction order (was rel=1e-12, below the bound: ~1e-12 of a mean KL of ~2 over 1008 classes)
    assert inception_score_from_logits(logits.cuda(), splits=10, shuffle_seed=5) == pytest.approx(
        inception_score_from_logits(logits, splits=10, shuffle_seed=5), rel=0, abs=_is_tol(logits))


def test_split_size_groups_consecutive_rows_with_a_shorter_last_group():
    """The ADM evaluator's rule: groups of split_size consecutive rows (the last shorter), mean of their scores."""
    from genmetrics.stats import inception_score_from_logits

    logits = np.random.default_rng(3).normal(size=(12, 7)) * 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for rows in (slice(0, 5), slice(5, 10), slice(10, 12)):
        q = p[rows]
        scores.append(np.exp(np.mean(np.sum(q * (np.log(q) - np.log(q.mean(0, keepdims=True))), 1))))
    mean, std = inception_score_from_logits(logits, split_size=5)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12) and std == pytest.approx(np.std(scores), rel=1e-12)
    with pytest.raises(ValueError, match="split_size"):
        inception_score_from_logits(logits, split_size=0)
