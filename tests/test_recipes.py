"""The framework pages (docs/torchrun.md, docs/diffusers.md, docs/accelerate.md) run: each page's ```python block,
with toy values swapped in for its marked constant lines, runs in a subprocess on the CPU (two processes under
torch.distributed.run for torchrun and accelerate) against a real MLflow store (sqlite), and the logged history
has one entry per key and step."""
import os
import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, os.pardir, "docs")
pytestmark = pytest.mark.filterwarnings("ignore:covariance of D", "ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture
def toy_reference(tmp_path, fid_weights_path):
    """A reference of 6 tiny images under the real FID Inception (offline weights)."""
    from fixtures_plugin_scoring import tiny_images

    from genmetrics.registry import build

    path = str(tmp_path / "toy-reference.h5")
    build(tiny_images(6, seed=3), path, name="toy", features=True, weights=fid_weights_path, device="cpu",
          progress=False)
    return path


def _page_script(tmp_path, page, toy, prelude=""):
    """The ```python block of docs/`page` with each `NAME = ...` line of `toy` replaced and `prelude` (definitions
    the toy values use) in front, written to a file."""
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        code = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
    for name, value in toy.items():
        code, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", code, flags=re.M)
        assert count == 1, f"docs/{page} no longer sets {name} on a line of its own"
    script = tmp_path / "recipe.py"
    script.write_text(prelude + code, encoding="utf-8")
    return str(script)


def _run(tmp_path, command, fid_weights_path, **extra_env):
    """`command` in tmp_path, offline, on the CPU, with the FID Inception from the offline weights and `extra_env`."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", GENMETRICS_INCEPTION_WEIGHTS=fid_weights_path,
               GENMETRICS_HOME=str(tmp_path / "home"), GENMETRICS_OFFLINE="1", HF_HUB_OFFLINE="1", **extra_env)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
        env.pop(name, None)
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def _assert_one_entry_per_key_and_step(store, experiment, steps):
    """The experiment's single run holds gen/fid and every other gen/ key once at each of `steps`, none NaN."""
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    keys = sorted(k for k in run.data.metrics if k.startswith("gen/"))
    assert "gen/fid" in keys, keys
    for key in keys:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == steps, key
        assert all(m.value == m.value for m in history), key  # not NaN
    return run


def _distributed(script):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script]


def test_the_torchrun_page_runs_on_two_cpu_processes(tmp_path, toy_reference, fid_weights_path):
    """docs/torchrun.md under torch.distributed.run with 2 gloo ranks: 4 samples (2 per rank) at steps 2 and 4;
    rank 0 logs each key once per step, with the world size in the tags."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    toy = {"REFERENCE": repr(toy_reference), "NUM_SAMPLES": "4", "EVERY_N_STEPS": "2", "MAX_STEPS": "4",
           "TRACKING_URI": repr(store)}
    _run(tmp_path, _distributed(_page_script(tmp_path, "torchrun.md", toy)), fid_weights_path)
    run = _assert_one_entry_per_key_and_step(store, "generator", [2, 4])
    assert (run.data.tags["gen/num_samples"], run.data.tags["gen/rank_num_samples"]) == ("4", "2,2")


TINY_PIPELINE = '''
def _tiny_pipeline():
    """An unconditional DDPMPipeline with random weights: a 2-level UNet of 16x16 images, 10 training timesteps."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4,
                       add_attention=False)
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10))


'''


def test_the_diffusers_page_runs(tmp_path, toy_reference, fid_weights_path):
    """docs/diffusers.md with a tiny DDPMPipeline (random weights, 16x16 images, 10 training timesteps) in place of
    the pretrained one: 4 images per evaluation at 2 and 3 denoising steps, each key logged once per step."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    toy = {"REFERENCE": repr(toy_reference), "NUM_SAMPLES": "4", "INFERENCE_STEPS": "[2, 3]", "BATCH_SIZE": "2",
           "TRACKING_URI": repr(store), "PIPELINE": "_tiny_pipeline()"}
    _run(tmp_path, [sys.executable, _page_script(tmp_path, "diffusers.md", toy, TINY_PIPELINE)], fid_weights_path)
    _assert_one_entry_per_key_and_step(store, "ddpm-cifar10", [2, 3])


def test_the_accelerate_page_runs_on_two_cpu_processes(tmp_path, toy_reference, fid_weights_path):
    """docs/accelerate.md under torch.distributed.run with 2 CPU processes (Accelerator, told to use the CPU,
    initialises gloo from the environment): 4 samples (2 per process) at steps 2 and 4; the main process logs each
    key once per step."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    toy = {"REFERENCE": repr(toy_reference), "NUM_SAMPLES": "4", "EVERY_N_STEPS": "2", "MAX_STEPS": "4",
           "TRACKING_URI": repr(store)}
    _run(tmp_path, _distributed(_page_script(tmp_path, "accelerate.md", toy)), fid_weights_path,
         ACCELERATE_USE_CPU="true")  # else Accelerator leaves CPU processes apart, each its own main process
    run = _assert_one_entry_per_key_and_step(store, "generator", [2, 4])
    assert (run.data.tags["gen/num_samples"], run.data.tags["gen/rank_num_samples"]) == ("4", "2,2")
