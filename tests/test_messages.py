"""One warning category, and the rank-deficient covariance warning once per process for each (n, D) (issue 12
item 3): a training loop that scores every few steps sees it once, still shown."""
import warnings

import numpy as np
import pytest

from genmetrics.stats import GaussianMoments, GenMetricsWarning
from genmetrics.stats.messages import warn_once


def _cov_warnings(features, calls):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Python's own "once per location" filter is not what keeps it quiet
        for _ in range(calls):
            GaussianMoments.from_features(features).cov
    return [w for w in caught if "rank at most" in str(w.message)]


def test_rank_deficient_covariance_warns_once_per_n_and_dim():
    rng = np.random.default_rng(0)
    first = _cov_warnings(rng.normal(size=(10, 64)), calls=5)
    assert len(first) == 1 and first[0].category is GenMetricsWarning
    assert "n=10" in str(first[0].message) and "D=64" in str(first[0].message)
    assert _cov_warnings(rng.normal(size=(10, 64)), calls=3) == []  # same (n, D): already shown
    assert len(_cov_warnings(rng.normal(size=(12, 64)), calls=3)) == 1  # another n: shown once
    assert _cov_warnings(rng.normal(size=(100, 64)), calls=1) == []  # n > D: no warning


def test_warn_once_and_the_category():
    assert issubclass(GenMetricsWarning, UserWarning)
    with pytest.warns(GenMetricsWarning, match="shown once"):
        for _ in range(3):
            warn_once(("test", 1), "shown once")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_once(("test", 1), "not again")  # would raise if shown
