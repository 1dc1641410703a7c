"""Logged data says what was computed (issue 12 item 5): KID over subsets that cannot differ reports no std,
and the `metrics` param lists the computed metrics, `metrics_requested` the set asked for; the reference's
params are what was computed or verified, never what its file claims (issue 19 item 10). No MLflow."""
import hashlib
import json

import pytest
from fixtures_plugin_scoring import TinyExtractor, make_tiny_reference, tiny_images

from genmetrics.plugin import score_samples

pytestmark = [pytest.mark.filterwarnings("ignore:covariance of D"), pytest.mark.usefixtures("no_downloads")]


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


# ---------------------------------------------------------------- issue 19 item 10: facts, not claims

CLAIMED = "cifar10-train-32-clean@1"
CLAIMED_HASHES = {"sha256": "0" * 64, "file_sha256": "1" * 64, "source_sha256": "2" * 64}


def _write_claiming(path, reference, claimed_ref=CLAIMED):
    """`reference`'s statistics written to `path` with attributes claiming a registry ref and hashes."""
    from genmetrics.registry.refstats import ReferenceStats, write_refstats

    meta = dict(reference.meta, registry_ref=claimed_ref, **CLAIMED_HASHES)
    return write_refstats(str(path), ReferenceStats(reference.mu, reference.sigma, reference.n,
                                                    features=reference.features, meta=meta))


def _reference_params(reference):
    params = score_samples(tiny_images(8, seed=2), reference=reference, model=TinyExtractor(), metrics=("fid",)).params
    return {k: v for k, v in params.items() if k.startswith("gen/reference")}


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_file_claiming_a_registry_ref_and_hashes_is_logged_by_what_was_computed(reference, tmp_path):
    path = _write_claiming(tmp_path / "crafted.h5", reference)
    assert _reference_params(path) == {"gen/reference": path, "gen/reference_sha256": _sha256(path),
                                       "gen/reference_claimed_ref": CLAIMED, "gen/reference_num_samples": "24"}


def test_statistics_in_memory_log_no_hash_they_carry(reference):
    claiming = type(reference)(reference.mu, reference.sigma, reference.n, meta=dict(reference.meta, **CLAIMED_HASHES))
    assert _reference_params(claiming) == {"gen/reference": "tiny-train-32-clean@1", "gen/reference_version": "1",
                                           "gen/reference_num_samples": "24"}


def test_a_registry_entry_is_named_only_while_its_bytes_verify(reference, tmp_path, monkeypatch):
    """The ref, version and source hash come from the manifest entry once the cached file's computed hash matches
    what fetch recorded (and the manifest's pin for an .h5 source); however the caller names the file. A file
    put in its place is logged by its path and hash, its ref only as a claim."""
    from genmetrics import registry
    from genmetrics.registry.refstats import write_refstats

    monkeypatch.delenv("GENMETRICS_OFFLINE")
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    source = write_refstats(str(tmp_path / "tiny.h5"), reference)
    entry = {"name": "tiny", "split": "train", "resolution": 32, "mode": "clean", "version": 3,
             "sources": [{"url": source, "format": "h5"}], "sha256": _sha256(source)}
    (tmp_path / "team.yaml").write_text(json.dumps({"format_version": 1, "entries": [entry]}))
    monkeypatch.setenv("GENMETRICS_MANIFEST", str(tmp_path / "team.yaml"))
    verified = {"gen/reference": "tiny-train-32-clean@3", "gen/reference_version": "3",
                "gen/reference_sha256": _sha256(source), "gen/reference_source_sha256": _sha256(source),
                "gen/reference_num_samples": "24"}
    assert _reference_params("tiny-train-32") == verified
    cached = registry.fetch("tiny-train-32")
    assert _reference_params(cached) == verified == _reference_params(registry.load(cached))
    _write_claiming(cached, reference, claimed_ref="tiny-train-32-clean@3")  # other bytes at the cache path
    assert _reference_params("tiny-train-32") == {
        "gen/reference": cached, "gen/reference_sha256": _sha256(cached),
        "gen/reference_claimed_ref": "tiny-train-32-clean@3", "gen/reference_num_samples": "24"}
