"""Logged data says what was computed (issue 12 item 5): KID over subsets that cannot differ reports no std,
and the `metrics` param lists the computed metrics, `metrics_requested` the set asked for. No MLflow."""
import pytest
from fixtures_plugin_scoring import TinyExtractor, make_tiny_reference, tiny_images

from genmetrics.plugin import score_samples

pytestmark = pytest.mark.filterwarnings("ignore:covariance of D")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")  # LPIPS backbone weights unavailable: the default skips LPIPS


@pytest.fixture(scope="module")
def reference():
    return make_tiny_reference(tiny_images(24, seed=1))


def test_kid_whose_subsets_are_the_whole_sets_logs_no_std(reference):
    result = score_samples(tiny_images(24, seed=2, shift=0.2), reference=reference, model=TinyExtractor(),
                           metrics=("fid", "kid"))
    assert set(result.metrics) == {"gen/fid", "gen/kid"}
    assert result.params["gen/kid_subsets"] == "1" and result.params["gen/kid_subset_size"] == "24"
    assert result.params["gen/kid_std"].startswith("not logged: every subset is the whole set (24 samples, 24 ")


@pytest.mark.parametrize("count, subset_size", [(23, 1000), (24, 10)])
def test_kid_whose_subsets_can_differ_logs_its_std(reference, count, subset_size):
    result = score_samples(tiny_images(count, seed=2, shift=0.2), reference=reference, model=TinyExtractor(),
                           metrics=("kid",), kid_subsets=5, kid_subset_size=subset_size)
    assert result.metrics["gen/kid_std"] > 0
    assert result.params["gen/kid_subsets"] == "5" and "gen/kid_std" not in result.params


def test_metrics_param_lists_what_was_computed(reference):
    result = score_samples(tiny_images(8, seed=2), reference=reference, model=TinyExtractor(), kid_subsets=3,
                           diversity_pairs=3)
    computed = {key.split("/")[1] for key in result.metrics} - {"kid_std"}
    assert "gen/skipped.is" in result.tags and "is" not in result.params["gen/metrics"].split(",")
    assert {m.replace("_diversity", "") for m in computed} == set(result.params["gen/metrics"].split(","))
    assert result.params["gen/metrics_requested"] == "default:fid,kid,is,ssim,lpips"
    named = score_samples(tiny_images(8, seed=2), reference=reference, model=TinyExtractor(), metrics=("fid",))
    assert (named.params["gen/metrics"], named.params["gen/metrics_requested"]) == ("fid", "fid")
