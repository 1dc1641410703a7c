"""The metric table (issue 20): every metric loggable by name, a user's metric is one register_metric call, and
`genmetrics fid` and `score_samples` compute through one function, so they give the same numbers."""
import numpy as np
import pytest
from fixtures_plugin_scoring import TinyExtractor, make_tiny_reference, tiny_images

from genmetrics.plugin import score_samples
from genmetrics.stats import extract_features, fid_infinity, prdc
from genmetrics.stats.metric_table import METRICS, MetricError, compare, register_metric, unregister_metric

pytestmark = [pytest.mark.filterwarnings("ignore:covariance of D"), pytest.mark.usefixtures("no_downloads")]


@pytest.fixture(scope="module")
def reference():
    return make_tiny_reference(tiny_images(40, seed=1))


@pytest.fixture(scope="module")
def samples():
    return tiny_images(30, seed=2, shift=0.1)


@pytest.fixture
def registered():
    """Names registered by a test, removed after it (the table is process-wide)."""
    names = []
    yield names
    for name in names:
        unregister_metric(name)


def _features(images):
    return extract_features(images, model=TinyExtractor(), progress=False)["pool3"]


def test_prdc_and_fid_infinity_are_loggable_by_name(reference, samples):
    result = score_samples(samples, reference=reference, model=TinyExtractor(), metrics=["prdc", "fid_inf"],
                           metric_options={"fid_inf_min_samples": 10, "fid_inf_num_points": 4})
    expected = prdc(np.asarray(reference.features), _features(samples), k=5)
    assert result.metrics["gen/prdc_precision"] == expected["precision"]
    assert result.metrics["gen/prdc_recall"] == expected["recall"]
    assert result.metrics["gen/density"] == expected["density"]
    assert result.metrics["gen/coverage"] == expected["coverage"]
    assert result.metrics["gen/fid_inf"] == fid_infinity(_features(samples), reference.mu, reference.sigma,
                                                         min_samples=10, num_points=4)
    assert result.params["gen/prdc_k"] == "5"


def test_a_registered_metric_is_logged_once_with_the_provenance(reference, samples, registered, tmp_path):
    import mlflow

    from genmetrics.plugin import log_gen_metrics

    register_metric("mean_gap", lambda s, r: float(((s.mu - r.mu) ** 2).sum()))
    registered.append("mean_gap")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run() as run:
            logged = log_gen_metrics(samples, reference=reference, metrics=["fid", "mean_gap"], model=TinyExtractor(),
                                     step=3, log_grid=False)
        data = mlflow.MlflowClient().get_run(run.info.run_id).data
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "gen/mean_gap")
    finally:
        mlflow.set_tracking_uri(None)
    gap = float(((_features(samples).double().mean(0).numpy() - reference.mu) ** 2).sum())
    assert set(logged) == {"gen/fid", "gen/mean_gap"} and logged["gen/mean_gap"] == pytest.approx(gap, rel=1e-9)
    assert [(m.step, m.value) for m in history] == [(3, logged["gen/mean_gap"])]
    assert data.tags["gen/metrics"] == "fid,mean_gap" and data.tags["gen/extractor"] == TinyExtractor.feature_extractor


def test_registering_twice_or_a_failing_metric_is_a_clear_error(reference, samples, registered):
    register_metric("broken", lambda s, r: 1 / 0, keep_features=True)
    registered.append("broken")
    with pytest.raises(ValueError, match="a metric named 'broken' is already registered"):
        register_metric("broken", lambda s, r: 0.0)
    with pytest.raises(ValueError, match="'fid' is already registered"):
        register_metric("fid", lambda s, r: 0.0)
    with pytest.raises(MetricError, match="metric 'broken' failed: ZeroDivisionError: division by zero"):
        score_samples(samples, reference=reference, model=TinyExtractor(), metrics=["broken"])
    register_metric("not_a_number", lambda s, r: "high")
    registered.append("not_a_number")
    with pytest.raises(MetricError, match="metric 'not_a_number' returned 'high'"):
        score_samples(samples, reference=reference, model=TinyExtractor(), metrics=["not_a_number"])


def test_a_registered_metric_with_features_gets_both_sides_features(reference, samples, registered):
    seen = {}

    def nearest(s, r):
        seen.update(samples=s.features.shape, reference=np.asarray(r.features).shape, n=(s.n, r.n))
        return {"nearest_min": 0.5, "nearest_max": 2.0}

    register_metric("nearest", nearest, keep_features=True, keys=("nearest_min", "nearest_max"))
    registered.append("nearest")
    result = score_samples(samples, reference=reference, model=TinyExtractor(), metrics=["nearest"])
    assert result.metrics == {"gen/nearest_min": 0.5, "gen/nearest_max": 2.0}
    assert seen == {"samples": (30, 48), "reference": (40, 48), "n": (30, 40)}


def test_every_feature_metric_is_computed_by_one_function(reference, samples, monkeypatch):
    """score_samples gives what compare gives on the same sides: the CLI's `genmetrics fid` calls compare too
    (test_plugin_cli_fid checks the command line's numbers against score_samples)."""
    from genmetrics.stats import FeatureAccumulator

    accumulator = FeatureAccumulator(TinyExtractor(), keep_features=True)
    accumulator.update(samples)
    side = accumulator.compute()
    names = ["fid", "kid", "copy", "prdc"]
    settings = {"kid_subsets": 10, "kid_subset_size": 20, "seed": 0}
    expected = compare(side, reference, names, settings).values
    got = score_samples(samples, reference=reference, model=TinyExtractor(), metrics=names, kid_subsets=10,
                        kid_subset_size=20)
    assert got.metrics == {f"gen/{key}": value for key, value in expected.items()}


def test_the_table_declares_every_metric_and_its_keys():
    assert list(METRICS)[:3] == ["fid", "kid", "is"]
    assert METRICS["prdc"].keys == ("prdc_precision", "prdc_recall", "density", "coverage")
    assert {m.kind for m in METRICS.values()} == {"features", "images"}
    for entry in METRICS.values():
        assert entry.description and entry.logged_keys()
        assert entry.kind == "images" or callable(entry.compute)


def test_the_docs_list_every_metric_of_the_table():
    import pathlib

    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text(encoding="utf-8")
    missing = [key for entry in METRICS.values() for key in entry.logged_keys() if f"`{key}`" not in text]
    assert not missing, f"docs/metrics.md does not list {missing}"


def test_the_command_line_and_score_samples_agree_on_every_feature_metric(reference, samples, tmp_path, capsys):
    """`genmetrics fid REF SAMPLES --metrics ...` on statistics files prints what score_samples logs for the same
    images (both go through compare; the printed values have 6 significant digits)."""
    from genmetrics.plugin.cli import main
    from genmetrics.registry import write_refstats

    ref_path, samples_path = str(tmp_path / "ref.h5"), str(tmp_path / "samples.h5")
    write_refstats(ref_path, reference)
    write_refstats(samples_path, make_tiny_reference(samples))
    names = ["kid", "copy", "prdc"]
    assert main(["fid", ref_path, samples_path, "--metrics", ",".join(names), "--kid-subsets", "10",
                 "--kid-subset-size", "20"]) == 0
    printed = dict(line.split(": ") for line in capsys.readouterr().out.splitlines())
    scored = score_samples(samples, reference=ref_path, model=TinyExtractor(), metrics=["fid", *names],
                           kid_subsets=10, kid_subset_size=20).metrics
    assert float(printed[f"FD ({TinyExtractor.feature_extractor})"]) == pytest.approx(scored["gen/fid"], rel=1e-6)
    assert float(printed["KID"].split()[0]) == pytest.approx(scored["gen/kid"], rel=1e-5)
    for key in ("copy", "prdc_precision", "prdc_recall", "density", "coverage"):
        assert float(printed[key]) == pytest.approx(scored[f"gen/{key}"], rel=1e-5)


def test_a_misspelt_metric_option_is_refused(reference, samples):
    refused = r"unknown metric option\(s\) \['prdc_kk'\]; the metrics' options are .*'prdc_k'"
    with pytest.raises(ValueError, match=refused):
        score_samples(samples, reference=reference, model=TinyExtractor(), metrics=["prdc"],
                      metric_options={"prdc_kk": 3})
    three = score_samples(samples, reference=reference, model=TinyExtractor(), metrics=["prdc"],
                          metric_options={"prdc_k": 3})
    assert three.params["gen/prdc_k"] == "3"
    assert three.metrics["gen/prdc_recall"] == prdc(np.asarray(reference.features), _features(samples), k=3)["recall"]
