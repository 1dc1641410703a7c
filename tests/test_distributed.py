"""torch.distributed (gloo, CPU, 2 ranks under torchrun): statistics, scoring inside training and builds combine
the ranks exactly, and a failing rank stops every rank with a clear error."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from fixtures_plugin_scoring import TinyExtractor

from genmetrics.plugin import score_samples
from genmetrics.stats import GaussianMoments

JOBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_jobs.py")
sys.path.insert(0, os.path.dirname(JOBS))
from distributed_jobs import COUNTS, rank_features, score_samples_of  # noqa: E402


def torchrun(*args, timeout=600, env=None):
    """Run `args` under torchrun with 2 local ranks; returns the completed process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _job(name, out, *args, **kwargs):
    return torchrun(JOBS, name, str(out), *map(str, args), **kwargs)


@pytest.mark.parametrize("layout", ["ragged", "empty"])
def test_all_reduced_moments_equal_the_offline_merge(layout, tmp_path):
    done = _job("moments", tmp_path, layout)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = COUNTS[layout]
    parts = [rank_features(r, counts) for r in range(2)]
    offline = GaussianMoments.from_features(parts[0])
    if counts[1]:
        offline.merge(GaussianMoments.from_features(parts[1]))
    for rank in range(2):
        got = np.load(tmp_path / f"moments-{layout}.rank{rank}.npz")
        assert int(got["local_n"]) == counts[rank] and int(got["n"]) == sum(counts)
        assert np.allclose(got["mean"], offline.mean, rtol=1e-12, atol=0)
        assert np.abs(got["cov"] - offline.cov).max() <= 1e-12 * np.abs(offline.cov).max()
        assert np.array_equal(got["rows"], np.concatenate(parts))  # gathered in rank order, ragged/empty shards


def test_a_failing_rank_stops_every_rank_with_a_clear_error(tmp_path):
    done = _job("fail", tmp_path, 30)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"fail.rank{r}.json").read_text()) for r in range(2)]
    assert seen[1]["message"] == "ValueError: rank 1 could not read its images"
    assert seen[0]["message"].startswith("DistributedError: rank(s) [1] of 2 failed")
    assert seen[0]["seconds"] < 30  # told at once, not after the process group's timeout


def test_log_gen_metrics_on_every_rank_logs_once(tmp_path, mlflow_server, tiny_reference_path):
    from mlflow.tracking import MlflowClient

    done = _job("score", tmp_path, mlflow_server.uri, tiny_reference_path)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"score.rank{r}.json").read_text()) for r in range(2)]
    assert seen[0]["results"] == seen[1]["results"]  # every rank returns the same dict
    client = MlflowClient(mlflow_server.uri)
    run_id = seen[0]["run_id"]
    for step, result in enumerate(seen[0]["results"]):
        alone = score_samples(score_samples_of(step), reference=tiny_reference_path,
                              metrics=["fid", "kid", "ssim", "precision", "recall"], model=TinyExtractor(), kid_subsets=5,
                              diversity_pairs=6).metrics
        assert result.keys() == alone.keys()
        assert result["gen/fid"] == pytest.approx(alone["gen/fid"], rel=1e-6)
        assert result["gen/kid"] == pytest.approx(alone["gen/kid"], rel=1e-6)
        assert result["gen/ssim_diversity"] == pytest.approx(alone["gen/ssim_diversity"], rel=1e-6)
        assert (result["gen/precision"], result["gen/recall"]) == (alone["gen/precision"], alone["gen/recall"])
    for key in seen[0]["results"][0]:
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == [0, 1], key  # one entry per step: rank 0 logged once
    params = client.get_run(run_id).data.tags  # provenance is logged as tags
    assert params["gen/num_samples"] == "7" and params["gen/rank_num_samples"] == "3,4"


def test_a_failing_rank_leaves_no_partial_file(tmp_path):
    from fixtures_plugin_scoring import tiny_images
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(tiny_images(6, seed=5)):
        Image.fromarray(image).save(folder / f"{i}.png")
    done = _job("build_fail", tmp_path, folder)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"build_fail.rank{r}.json").read_text())["message"] for r in range(2)]
    assert seen[1].startswith("OSError: rank 1: cannot read images")
    assert seen[0].startswith("DistributedError: rank(s) [1] of 2 failed")
    assert not (tmp_path / "failed.h5").exists()


def test_torchrun_build_equals_the_single_process_build(tmp_path, fid_weights_path, photos):
    from fixtures_data import make_photo_folder

    from genmetrics.registry import build, load

    folder = make_photo_folder(tmp_path / "photos", list(photos))
    genmetrics = os.path.join(os.path.dirname(sys.executable), "genmetrics")
    out = tmp_path / "ddp.h5"
    done = torchrun(genmetrics, "stats", "build", str(folder), "-o", str(out), "--weights", fid_weights_path,
                    "--features", "--device", "cpu", "--checkpoint-every", "2", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = load(str(out))
    alone = build(str(folder), str(tmp_path / "alone.h5"), weights=fid_weights_path, features=True, device="cpu",
                  progress=False)
    assert ddp.n == alone.n == len(photos) and ddp.meta["shard"] == "0/1"
    assert np.allclose(ddp.mu, alone.mu, rtol=1e-6, atol=1e-7)
    assert np.abs(ddp.sigma - alone.sigma).max() <= 1e-6 * np.abs(alone.sigma).max()
    assert np.allclose(ddp.features, alone.features, rtol=1e-5, atol=1e-6)  # rank order = file order
    assert sorted(p.name for p in tmp_path.iterdir() if ".h5" in p.name) == [
        "alone.h5", "ddp.h5"]  # no shard files, no checkpoints, no lock files left
    # rank 0 alone reports, with the file name and the number of ranks
    assert done.stdout.splitlines() == [f"{out}: n={len(photos)} mode=clean extractor=inception-v3-compat ranks=2"]
    warned = [line for line in done.stderr.splitlines() if "genmetrics stats build: warning:" in line]
    assert warned and len(warned) == len(set(warned)), warned  # each warning once (rank 0), not once per rank


# ------------------------------------------------ calls that differ between the ranks (issue 19, item 9)


@pytest.fixture(scope="module")
def other_reference_path(tmp_path_factory):
    """A second tiny reference (other images), as a rank might be given by mistake."""
    from fixtures_plugin_scoring import make_tiny_reference, tiny_images

    from genmetrics.registry.refstats import write_refstats

    path = tmp_path_factory.mktemp("other-reference") / "other-train-32.h5"
    write_refstats(str(path), make_tiny_reference(tiny_images(24, seed=2)))
    return str(path)


def test_ranks_called_differently_all_raise_naming_the_difference(tmp_path, tiny_reference_path,
                                                                  other_reference_path):
    """Before: another num_samples on one rank scored over the wrong total (6 images), another reference gave each
    rank its own dict, and metrics or targets on one rank only hung in mismatched collectives. Now every rank
    raises a DistributedError naming the setting and each rank's value, and the next, identical call works."""
    from genmetrics.stats.download import file_sha256

    done = _job("mismatch", tmp_path, tiny_reference_path, other_reference_path, timeout=300,
                env={"JOB_GROUP_TIMEOUT": "120"})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"mismatch.rank{r}.json").read_text()) for r in range(2)]
    expected = {
        "num_samples": "num_samples differs (rank 0: 7; rank 1: 6)",
        "reference": f"reference differs (rank 0: sha256:{file_sha256(tiny_reference_path)}; rank 1: "
                     f"sha256:{file_sha256(other_reference_path)})",
        "metrics": "metrics differs (rank 0: fid,kid; rank 1: fid)",
        "targets": "targets differs (rank 0: none; rank 1: given)",
        "seed": "seed differs (rank 0: 0; rank 1: 1)",
    }
    for name, difference in expected.items():
        for rank in range(2):
            error = seen[rank][name].get("error", f"no error: {seen[rank][name]}")
            assert error.startswith("DistributedError: score_samples was called with different settings on the "
                                    "ranks: "), (name, rank, error)
            assert difference in error, (name, rank, error)
    assert seen[1]["a failing rank"]["error"].startswith("FileNotFoundError")
    assert seen[0]["a failing rank"]["error"].startswith("DistributedError: score_samples: rank(s) [1] of 2 failed")
    assert seen[0]["no run on rank 0"]["error"].startswith("ValueError: log_gen_metrics needs an MLflow run")
    assert seen[1]["no run on rank 0"]["error"].startswith("DistributedError: rank(s) [0] of 2 failed")
    assert seen[0]["identical"]["result"] == seen[1]["identical"]["result"]  # the process group still works
    alone = score_samples(score_samples_of(0), reference=tiny_reference_path, metrics=["fid", "kid"],
                          model=TinyExtractor(), kid_subsets=5).metrics
    assert seen[0]["identical"]["result"]["gen/fid"] == pytest.approx(alone["gen/fid"], rel=1e-6)


def test_a_rank_that_never_calls_does_not_hang_the_others(tmp_path, tiny_reference_path):
    """Rank 1 never calls score_samples and the process group keeps torch's 30 min timeout:
    GENMETRICS_DIST_TIMEOUT bounds rank 0's wait at the first collective."""
    done = _job("absent", tmp_path, tiny_reference_path, timeout=300,
                env={"GENMETRICS_DIST_TIMEOUT": "3", "ABSENT_SECONDS": "20"})
    assert done.returncode == 0, done.stderr[-3000:]
    error = json.loads((tmp_path / "absent.rank0.json").read_text())["error"]
    assert error.startswith("DistributedError: score_samples: not every rank arrived within 3 s "
                            "(GENMETRICS_DIST_TIMEOUT"), error
