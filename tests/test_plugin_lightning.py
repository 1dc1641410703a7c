"""GenMetricsCallback with a real lightning.Trainer on the CPU (1 process, and 2 under strategy "ddp" with gloo) and a
real MLflow store (sqlite): the logged history equals log_gen_metrics on the images the sampler drew."""
import json
import os
import re
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from fixtures_plugin_scoring import TinyExtractor
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils

import lightning_jobs  # tests/ is on sys.path, as for the fixtures modules

from genmetrics.plugin import log_gen_metrics, spool
from genmetrics.plugin.lightning import GenMetricsCallback

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.filterwarnings("ignore:covariance of D", "ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh GENMETRICS_HOME (spool), offline, the working directory in tmp_path (a sqlite store's artifacts go to
    ./mlruns), and the fluent tracking URI restored (MLFlowLogger sets it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    spool.senders.reset()
    previous = tracking_utils._tracking_uri
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)
    spool.senders.reset()


def _store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _drawn(out_dir, step, world):
    """The images every rank's sampler drew at `step`, in rank order."""
    return np.concatenate([np.load(os.path.join(out_dir, f"samples-step{step}.rank{r}.npy")) for r in range(world)])


def _assert_history_equals_log_gen_metrics(uri, run_id, out_dir, reference, world):
    """One entry per key and step (steps 2 and 4: the epoch trigger at step 4 is the same step), each value that of
    log_gen_metrics on the same images in one process."""
    client = MlflowClient(uri)
    expected = {}
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=client.create_experiment(f"oracle-{world}")):
        for step in (2, 4):
            images = _drawn(out_dir, step, world)
            assert len(images) == lightning_jobs.NUM_SAMPLES
            expected[step] = log_gen_metrics(images, reference=reference, step=step, model=TinyExtractor(),
                                             log_grid=False, **lightning_jobs.SCORE_OPTIONS)
    assert set(expected[2]) == {"gen/fid", "gen/kid", "gen/kid_std", "gen/ssim_diversity"}
    for key in expected[2]:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [step for step, _ in history] == [2, 4], key
        for step, value in history:
            assert value == pytest.approx(expected[step][key], rel=1e-6, abs=1e-6), (key, step)
    grids = sorted(os.path.basename(a.path) for a in client.list_artifacts(run_id, "images")
                   if a.path.endswith(".png") and "+compressed" not in a.path)
    assert [g.split("+step+")[1].split("+")[0] for g in grids if g.startswith("gen~samples+")] == ["2", "4"], grids


def _assert_sampler_saw_eval_and_no_grad(out_dir, world, shares):
    for step in (2, 4):
        for rank in range(world):
            with open(os.path.join(out_dir, f"seen-step{step}.rank{rank}.json")) as f:
                seen = json.load(f)
            assert seen == {"n": shares[rank], "training": False, "any_training": False, "grad": False}
    for rank in range(world):  # each submodule's own mode is back: the module trains, its frozen part stays eval
        with open(os.path.join(out_dir, f"modes.rank{rank}.json")) as f:
            modes = json.load(f)
        assert [m["step"] for m in modes] == [0, 1, 2, 3]
        assert all(m["training"] and not m["frozen"] and m["grad"] for m in modes), modes


def test_one_process_logs_each_key_once_per_trigger_to_the_mlflow_logger_run(tmp_path, tiny_reference_path):
    out = tmp_path / "out"
    out.mkdir()
    trainer = lightning_jobs.train(str(out), _store(tmp_path), tiny_reference_path)
    _assert_sampler_saw_eval_and_no_grad(out, 1, [7])
    _assert_history_equals_log_gen_metrics(_store(tmp_path), trainer.logger.run_id, out, tiny_reference_path, 1)


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_two_ddp_processes_score_their_shares_and_rank_0_logs_once(tmp_path, tiny_reference_path, strategy):
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, os.path.join(HERE, "lightning_jobs.py"), str(out), _store(tmp_path), tiny_reference_path,
               "2", strategy]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    _assert_sampler_saw_eval_and_no_grad(out, 2, [3, 4])  # 7 samples: contiguous shares 7*1//2 and 7*2//2 - 3
    run_id = (out / "run_id").read_text()
    if strategy == "ddp_spawn":  # the spawned rank 0's logger starts its own run (Lightning's): the one with scores
        client = MlflowClient(_store(tmp_path))
        experiment = client.get_experiment_by_name("lightning")
        scored = [r.info.run_id for r in client.search_runs([experiment.experiment_id]) if "gen/fid" in r.data.metrics]
        assert len(scored) == 1, scored
        run_id = scored[0]
    _assert_history_equals_log_gen_metrics(_store(tmp_path), run_id, out, tiny_reference_path, 2)


def test_without_a_logger_the_active_run_is_used(tmp_path, tiny_reference_path):
    out = tmp_path / "out"
    out.mkdir()
    mlflow.set_tracking_uri(_store(tmp_path))
    with mlflow.start_run(experiment_id=MlflowClient(_store(tmp_path)).create_experiment("active")) as run:
        lightning_jobs.train(str(out), _store(tmp_path), tiny_reference_path, logger=False)
    history = MlflowClient(_store(tmp_path)).get_metric_history(run.info.run_id, "gen/fid")
    assert sorted(m.step for m in history) == [2, 4]


def test_without_a_logger_or_run_fit_stops_saying_what_to_add(tmp_path, tiny_reference_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"MLFlowLogger.*Trainer\(logger=\.\.\.\).*mlflow\.start_run"):
        lightning_jobs.train(str(out), _store(tmp_path), tiny_reference_path, logger=False)
    assert not list(out.glob("samples-*")), "nothing was drawn"


@pytest.mark.parametrize("kwargs, error, match", [
    ({}, ValueError, "needs a trigger: pass every_n_train_steps"),
    ({"every_n_train_steps": 0}, ValueError, "every_n_train_steps must be a positive integer, got 0"),
    ({"every_n_epochs": 1.5}, ValueError, "every_n_epochs must be a positive integer"),
    ({"every_n_epochs": 1, "num_samples": 0}, ValueError, "num_samples must be a positive integer"),
    ({"every_n_epochs": 1, "metrics": ["fd"]}, ValueError, r"unknown metric\(s\) \['fd'\]; choose from"),
    ({"every_n_epochs": 1, "kid_subsets": -1}, ValueError, "kid_subsets must be a positive integer"),
    ({"every_n_epochs": 1, "distributed": False}, TypeError, r"unknown option\(s\) \['distributed'\]; valid"),
    ({"every_n_epochs": 1, "sampler": "images"}, ValueError, r"sampler must be a callable sampler\(pl_module, n\)"),
])
def test_bad_options_are_refused_at_construction(kwargs, error, match):
    arguments = dict(sampler=lightning_jobs.sampler, reference=None, num_samples=8)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        GenMetricsCallback(**arguments)


def test_the_lightning_page_runs(tmp_path, fid_weights_path, monkeypatch):
    """docs/lightning.md's code block, at toy size (a reference of 6 images, 4 samples, 4 steps), with the FID
    Inception from the offline weights: it logs gen/fid at the two triggers."""
    from fixtures_plugin_scoring import tiny_images

    from genmetrics.registry import build

    reference = str(tmp_path / "toy-reference.h5")
    build(tiny_images(6, seed=3), reference, name="toy", features=True, weights=fid_weights_path, device="cpu",
          progress=False)
    with open(os.path.join(HERE, os.pardir, "docs", "lightning.md"), encoding="utf-8") as f:
        code = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
    toy = {"REFERENCE": repr(reference), "NUM_SAMPLES": "4", "EVERY_N_STEPS": "2", "MAX_STEPS": "4",
           "TRACKING_URI": repr(_store(tmp_path))}
    for name, value in toy.items():
        code, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", code, flags=re.M)
        assert count == 1, f"docs/lightning.md no longer sets {name} on a line of its own"
    script = tmp_path / "recipe.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", GENMETRICS_INCEPTION_WEIGHTS=fid_weights_path)
    done = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    client = MlflowClient(_store(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("generator").experiment_id])
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "gen/fid")) == [2, 4]
