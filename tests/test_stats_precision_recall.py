"""ADM precision/recall (Kynkäänniemi et al. 2019 as OpenAI's evaluator computes it) against a brute-force float64
transcription of the rule: squared distances, the k-th nearest OTHER point's squared distance as radius, closed
balls (``<=``)."""
import numpy as np
import pytest
import torch
from tolerances import sum_tol

from genmetrics.stats import precision_recall, prdc
from genmetrics.stats.metrics.precision_recall import fraction_in_balls


def _brute_radii(x, k):
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)  # the point itself is not a neighbour; a duplicate is, at 0
    return np.sort(d2, axis=1)[:, k - 1]


def _brute_precision_recall(real, fake, k):
    """The rule with full matrices of direct float64 sums (exact for integer features)."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    d2 = ((real[:, None] - fake[None]) ** 2).sum(-1)  # (N, M)
    return {"precision": float((d2 <= _brute_radii(real, k)[:, None]).any(axis=0).mean()),
            "recall": float((d2 <= _brute_radii(fake, k)[None, :]).any(axis=1).mean())}


def _gap_and_bound(real, fake, k):
    """(smallest |d² - r| over every comparison the rule makes, the rounding bound of one computed d²).

    A distance block about a centre c is within sum_tol(D + 2, 2 (|a - c|² + |b - c|²)) of the exact value, a
    radius (an order statistic) too, so decisions equal the oracle's when the gap exceeds twice the bound."""
    centre = real.mean(axis=0)
    largest = max(((real - centre) ** 2).sum(1).max(), ((fake - centre) ** 2).sum(1).max())
    bound = sum_tol(real.shape[1] + 2, 2 * 2 * (2 * largest))
    d2 = ((real[:, None] - fake[None]) ** 2).sum(-1)
    gap = min(np.abs(d2 - _brute_radii(real, k)[:, None]).min(), np.abs(d2 - _brute_radii(fake, k)[None, :]).min())
    return gap, bound


@pytest.mark.parametrize("n, m, k, chunk_size", [(120, 90, 3, 2048), (120, 90, 3, 7), (61, 50, 1, 16),
                                                  (50, 77, 5, 1), (33, 40, 3, 32)])
def test_equals_the_brute_force_rule(n, m, k, chunk_size):
    """Random features, block sizes that do and do not divide N and M (1, 7, 16, 32, larger than both)."""
    rng = np.random.default_rng(n + m + k)
    real, fake = rng.normal(size=(n, 24)), rng.normal(0.3, 1.2, size=(m, 24))
    gap, bound = _gap_and_bound(real, fake, k)
    assert gap > 2 * bound, (gap, bound)  # no comparison within rounding: the counts must be equal
    got = precision_recall(real, torch.from_numpy(fake), k=k, chunk_size=chunk_size)
    assert got == _brute_precision_recall(real, fake, k)
    assert 0.0 < got["precision"] < 1.0 and 0.0 < got["recall"] <= 1.0


@pytest.mark.parametrize("k", [1, 3, 4])
def test_integer_features_with_many_exact_ties_equal_the_rule_exactly(k):
    """Small integer coordinates make many distances equal to a radius exactly (points ON a ball's surface); a
    common offset of 1e6 makes the centred block arithmetic inexact, so ties are decided by the direct recheck."""
    rng = np.random.default_rng(k)
    real = rng.integers(-2, 3, size=(90, 6)).astype(np.float64) + 1e6
    fake = rng.integers(-2, 3, size=(70, 6)).astype(np.float64) + 1e6
    d2 = ((real[:, None] - fake[None]) ** 2).sum(-1)
    assert (d2 == _brute_radii(real, k)[:, None]).sum() > 20  # many samples exactly on a real radius
    for chunk_size in (5, 64, 2048):
        assert precision_recall(real, fake, k=k, chunk_size=chunk_size) == _brute_precision_recall(real, fake, k)


def test_closed_form_on_a_line():
    """1-D, k = 1: real radii (squared) 1, 1, 4, 9; fake radii 9, 6.25, 6.25, 30.25."""
    real = np.array([[0.0], [1.0], [3.0], [6.0]])
    fake = np.array([[-1.0], [2.0], [4.5], [10.0]])
    # -1 lies ON the ball of 0 (d² = 1 = r), 2 ON the ball of 1, 4.5 inside the ball of 3 (2.25 < 4); 10 is 16 > 9
    # from 6. Every real point lies in a fake ball: 0 (1 <= 9), 1 (1 <= 9), 3 (2.25 <= 6.25), 6 (2.25 <= 6.25).
    assert precision_recall(real, fake, k=1) == {"precision": 0.75, "recall": 1.0}
    assert fraction_in_balls(real, fake, k=1) == 0.75 and fraction_in_balls(fake, real, k=1) == 1.0


def test_a_sample_exactly_on_a_radius_counts_and_prdc_does_not_count_it():
    """k = 1: the origin's nearest neighbours (5, 0) and (-5, 0) are at squared distance 25, and so are theirs;
    (0, 5) and (0, -5) lie ON the origin's circle and outside every other ball. ADM's closed ball counts them;
    PRDC's open ball (Naeem et al.) does not."""
    real = np.array([[0.0, 0.0], [5.0, 0.0], [-5.0, 0.0], [200.0, 7.0]]) + 1e6
    fake = np.array([[0.0, 5.0], [0.0, -5.0], [-300.0, -300.0]]) + 1e6
    assert fraction_in_balls(real[:3], fake[:2], k=1) == 1.0
    assert precision_recall(real, fake, k=1)["precision"] == 2 / 3
    assert prdc(real, fake, k=1)["precision"] == 0.0


def test_duplicate_features_are_neighbours_at_distance_zero():
    """Four copies of p: with k = 3 their radius is 0 (three other copies at distance 0), so a sample equal to p
    counts and one a hair away does not; with k = 4 the radius is the nearest other point's distance."""
    rng = np.random.default_rng(5)
    p = rng.normal(size=8)
    others = rng.normal(size=(30, 8)) * 0.01 + 50.0  # far from p: only the copies are near it
    real = np.vstack([others, np.tile(p, (4, 1))])
    fake = np.vstack([p, p + 1e-9, others[:2] + 1e3])
    assert fraction_in_balls(real, fake, k=3) == 0.25  # only the exact copy of p (d² = 0 <= r = 0)
    assert fraction_in_balls(real, fake, k=4) == 0.5  # radius ~ 50² * 8: p + 1e-9 is inside too
    assert fraction_in_balls(real, fake[:1], k=3, chunk_size=3) == 1.0


def test_identical_and_distant_sets():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(40, 5)).astype(np.float32)
    assert precision_recall(real, real.copy()) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(real, real + 100.0) == {"precision": 0.0, "recall": 0.0}
    assert precision_recall(torch.from_numpy(real), torch.from_numpy(real).double()) == {"precision": 1.0,
                                                                                           "recall": 1.0}


def test_k_must_be_smaller_than_each_set():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(4, 3)), rng.normal(size=(10, 3))
    assert set(precision_recall(real, fake, k=3)) == {"precision", "recall"}  # k = n - 1 is the largest
    with pytest.raises(ValueError, match=r"real_features has 4 samples, .* needs at least k \+ 1 = 5"):
        precision_recall(real, fake, k=4)
    with pytest.raises(ValueError, match=r"fake_features has 4 samples"):
        precision_recall(fake, real, k=4)
    assert fraction_in_balls(fake, real[:1], k=9) in (0.0, 1.0)  # queries need no k + 1
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            precision_recall(real, fake, k=bad)


def test_bad_features_are_clear_errors():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match="real_features has feature dimension 3 but fake_features has 4"):
        precision_recall(real, rng.normal(size=(10, 4)))
    with pytest.raises(ValueError, match="fake_features contains NaN or Inf"):
        precision_recall(real, np.full((10, 3), np.nan))
    with pytest.raises(ValueError, match="must be a 2-D matrix"):
        precision_recall(real[0], real)
    with pytest.raises(TypeError, match="must be a numpy array or a torch tensor"):
        precision_recall(real.tolist(), real)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        precision_recall(real, real, chunk_size=0)


def test_agrees_with_torch_fidelity_prc():
    """torch-fidelity's prc: non-squared cdist distances, ``<=``, radius = kthvalue(k + 1) with the point itself
    (at 0) among the candidates. sqrt is monotone, so on data without near-ties the rule is the same."""
    metric_prc = pytest.importorskip("torch_fidelity.metric_prc")
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(150, 32)), rng.normal(0.2, 1.1, size=(130, 32))
    gap, bound = _gap_and_bound(real, fake, 3)
    assert gap > 1e-6 > 2 * bound  # far from any tie, also for cdist's float64 rounding
    # torch-fidelity's convention: features_1 generated, features_2 real.
    precision, recall = metric_prc.calculate_precision_recall_full(torch.from_numpy(fake), torch.from_numpy(real),
                                                                   neighborhood=3)
    ours = precision_recall(real, fake)  # torch-fidelity averages in float32: compare the counts
    counts = (round(ours["precision"] * 130), round(ours["recall"] * 150))
    assert (round(precision * 130), round(recall * 150)) == counts


@pytest.fixture(scope="module")
def sides():
    from fixtures_plugin_scoring import make_tiny_reference, tiny_images

    return make_tiny_reference(tiny_images(40, seed=1)), tiny_images(30, seed=2, shift=0.1)


@pytest.mark.filterwarnings("ignore:covariance of D")
@pytest.mark.usefixtures("no_downloads")
def test_the_table_logs_each_key_by_its_own_name(sides):
    """`precision` and `recall` are two entries: each logs only its own key (and its k); both equal the function."""
    from fixtures_plugin_scoring import TinyExtractor

    from genmetrics.plugin import score_samples
    from genmetrics.stats import extract_features

    reference, samples = sides
    expected = precision_recall(np.asarray(reference.features),
                                extract_features(samples, model=TinyExtractor(), progress=False)["pool3"])
    both = score_samples(samples, reference=reference, model=TinyExtractor(), metrics=["precision", "recall"])
    assert both.metrics == {"gen/precision": expected["precision"], "gen/recall": expected["recall"]}
    assert both.params["gen/precision_k"] == both.params["gen/recall_k"] == "3"
    only = score_samples(samples, reference=reference, model=TinyExtractor(), metrics=["fid", "recall"],
                         metric_options={"recall_k": 1})
    assert set(only.metrics) == {"gen/fid", "gen/recall"} and "gen/precision_k" not in only.params
    assert only.metrics["gen/recall"] == precision_recall(np.asarray(reference.features), extract_features(
        samples, model=TinyExtractor(), progress=False)["pool3"], k=1)["recall"]
