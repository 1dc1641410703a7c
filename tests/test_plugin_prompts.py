"""Prompts through the plugin (issue 22 item 4): clip_score as a metric-table entry computed in scoring's one pass,
log_gen_metrics (blocking and in the background), prompts stored beside logged samples for deferred scoring, the
evaluator's prompts column, and a 2-rank run. CLIP ViT-B/32 on seeded random weights in OpenAI's layout (made
here, offline), on tiny images."""
import itertools
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from fixtures_plugin_scoring import TinyExtractor, make_tiny_reference, tiny_images

pytest.importorskip("ftfy")  # clip_tokenize's text cleaning (the [text] extra)

from genmetrics.plugin import log_gen_metrics, score_samples  # noqa: E402
from genmetrics.plugin.background import flush  # noqa: E402
from genmetrics.registry.prompts_store import prompts_sha256  # noqa: E402
from genmetrics.stats import clip_score  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_downloads")

PROMPTS = ["a photo of a cat", "A red bus, 1990s!", "", "café au lait &amp; émoji 🐈", "it's   3 o'clock"]
WEIGHTS_ENV = "GENMETRICS_CLIP_VIT_B_32_WEIGHTS"
JOBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompt_jobs.py")


def _clip_weights(path):
    """CLIP ViT-B/32 (both towers) with seeded random weights saved as a float16 state dict in OpenAI's key layout
    (``visual.*`` and the text entries); the final LayerNorm biases share a direction, so that cosines are well
    above 0 as with trained weights (a comparison of 0 with 0 would prove nothing)."""
    from genmetrics.stats.networks.clip import build_clip
    from genmetrics.stats.networks.clip_text import build_clip_text

    torch.manual_seed(0)
    image, text = build_clip("clip-vit-b-32"), build_clip_text("clip-vit-b-32")
    with torch.no_grad():
        for parameter in itertools.chain(image.parameters(), text.parameters()):
            parameter.add_(0.02 * torch.randn_like(parameter))
        bias = torch.randn(text.ln_final.bias.shape[0])
        text.ln_final.bias.copy_(bias)
        shared = bias @ text.text_projection
        image.ln_post.bias.copy_(torch.linalg.lstsq(image.proj.T, shared[:, None]).solution[:, 0])
    state = {**{f"visual.{k}": v.half() for k, v in image.state_dict().items()},
             **{k: v.half() for k, v in text.state_dict().items()}}
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _clip_weights(tmp_path_factory.mktemp("clip") / "b32_state.pth")


@pytest.fixture
def clip_env(weights, monkeypatch):
    """The weights found by the default model name, through $GENMETRICS_CLIP_VIT_B_32_WEIGHTS."""
    monkeypatch.setenv(WEIGHTS_ENV, weights)
    return weights


@pytest.fixture(scope="module")
def images():
    return tiny_images(len(PROMPTS), seed=3, size=16)


@pytest.fixture(scope="module")
def expected(weights, images):
    """genmetrics.stats.clip_score of the images and PROMPTS, the oracle of the plugin's numbers."""
    return clip_score(images, PROMPTS, weights=weights, device="cpu", batch_size=2)


@pytest.fixture
def tracking(tmp_path):
    """A sqlite tracking store of this test (artifacts in tmp_path), as the fluent API's URI; a client of it."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("prompts", artifact_location=(tmp_path / "artifacts").as_uri())
    yield client, experiment_id
    flush()
    mlflow.set_tracking_uri(previous)


def _logged(client, run_id):
    """(metrics, genmetrics tags) of a run: what log_gen_metrics left there."""
    data = client.get_run(run_id).data
    return data.metrics, {k: v for k, v in data.tags.items() if k.startswith(("gen/", "genmetrics."))}


def test_score_samples_equals_clip_score_in_the_same_pass_as_fid(clip_env, images, expected):
    assert 5 < expected < 100
    reference = make_tiny_reference(tiny_images(12, seed=1))
    result = score_samples(images, reference=reference, model=TinyExtractor(), metrics=["fid", "clip_score"],
                           prompts=PROMPTS, batch_size=2)
    alone = score_samples(images, reference=reference, model=TinyExtractor(), metrics=["fid"], batch_size=2)
    assert result.metrics["gen/clip_score"] == pytest.approx(expected, abs=1e-6)
    assert result.metrics["gen/fid"] == alone.metrics["gen/fid"]
    assert result.params["gen/clip_score_model"] == "clip-vit-b-32"
    assert result.params["gen/prompts_sha256"] == prompts_sha256(PROMPTS)
    streamed = score_samples((batch for batch in np.array_split(images, 3)), metrics=["clip_score"],
                             prompts=tuple(PROMPTS), batch_size=2)  # a generator: the count is known at the end
    assert streamed.metrics["gen/clip_score"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("prompts, message", [("a cat", "not one string"), ([1, "a"], r"prompts\[0\] is int")])
def test_prompts_that_are_not_a_list_of_strings_are_refused(images, prompts, message):
    with pytest.raises(ValueError, match=message):
        score_samples(images, metrics=["clip_score"], prompts=prompts)


def test_prompts_are_ignored_unless_clip_score_is_asked(images):
    result = score_samples(images, metrics=["ssim"], prompts=["only one"])
    assert set(result.metrics) == {"gen/ssim_diversity"} and "gen/prompts_sha256" not in result.params


@pytest.mark.parametrize("samples, prompts, message", [
    (lambda images: images, PROMPTS[:4], "got 5 samples and 4 prompts"),
    (lambda images: iter(list(images)), PROMPTS + ["one more"], "got 5 samples and 6 prompts"),
    (lambda images: images, None, "no prompts were given for the 5 samples"),
])
def test_a_count_mismatch_names_both_counts_and_logs_nothing(clip_env, tracking, images, samples, prompts, message):
    client, experiment_id = tracking
    with mlflow.start_run(experiment_id=experiment_id) as run:
        with pytest.raises(ValueError, match=message):
            log_gen_metrics(samples(images), prompts=prompts, metrics=["clip_score"], step=1)
        draws = iter(images)
        with pytest.raises(ValueError, match=message.replace("5 samples", "2 samples") if prompts is None else
                           "got 2 samples and"):  # a sampler: the count is known before drawing
            log_gen_metrics(lambda n: np.stack([next(draws) for _ in range(n)]), num_samples=2, prompts=prompts,
                            metrics=["clip_score"], blocking=False)
    flush()
    assert _logged(client, run.info.run_id) == ({}, {})


def test_log_gen_metrics_blocking_and_in_the_background(clip_env, tracking, images, expected):
    client, experiment_id = tracking
    prompts = list(PROMPTS)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        now = log_gen_metrics(images, prompts=prompts, metrics=["clip_score"], step=0, batch_size=2)
        later = log_gen_metrics(images, prompts=prompts, metrics=["clip_score"], step=1, batch_size=2, blocking=False)
        prompts.clear()  # the background work holds its own copy, taken with the drawn samples
        assert later.result(timeout=300) == now
    assert now["gen/clip_score"] == pytest.approx(expected, abs=1e-6)
    history = client.get_metric_history(run.info.run_id, "gen/clip_score")
    assert sorted((m.step, m.value) for m in history) == [(0, now["gen/clip_score"]), (1, now["gen/clip_score"])]
    _, tags = _logged(client, run.info.run_id)
    assert tags["gen/prompts_sha256"] == prompts_sha256(PROMPTS) and tags["gen/clip_score_model"] == "clip-vit-b-32"


def test_deferred_scoring_uses_the_prompts_stored_beside_the_samples(clip_env, tracking, images, expected, tmp_path):
    from genmetrics.plugin import score_run
    from genmetrics.plugin.samples import log_gen_samples, read_samples_and_prompts

    client, experiment_id = tracking
    run_id = client.create_run(experiment_id).info.run_id
    path = log_gen_samples(images, step=4, run_id=run_id, prompts=PROMPTS, client=client)
    samples, targets, stored = read_samples_and_prompts(client.download_artifacts(run_id, path, str(tmp_path)))
    assert np.array_equal(samples, images) and targets is None and stored == PROMPTS
    with pytest.raises(ValueError, match="got 5 samples and 4 prompts"):
        log_gen_samples(images, step=5, run_id=run_id, prompts=PROMPTS[:4], client=client)
    reference = make_tiny_reference(tiny_images(12, seed=1))
    assert score_run(run_id, reference, metrics=["clip_score"], client=client, batch_size=2) == [4]
    history = client.get_metric_history(run_id, "gen/clip_score")
    assert [(m.step, m.value) for m in history] == [(4, pytest.approx(expected, abs=1e-6))]


@pytest.mark.parametrize("arrays, message", [
    ({"prompts_utf8": np.frombuffer(b"abc", np.uint8)}, "come together"),
    ({"prompts_utf8": np.frombuffer(b"abc", np.uint8), "prompt_ends": np.array([1, 3], np.int64)},
     "does not describe"),
    ({"prompts_utf8": np.frombuffer(b"a\xffc", np.uint8), "prompt_ends": np.array([1, 2, 3], np.int64)},
     "not valid UTF-8"),
    ({"prompts_utf8": np.array(["abc"]), "prompt_ends": np.array([1, 2, 3], np.int64)}, "must be uint8"),
])
def test_a_crafted_prompts_array_is_refused(tmp_path, arrays, message):
    from genmetrics.plugin.samples import SamplesFileError, read_samples_and_prompts

    np.savez(tmp_path / "crafted.npz", samples=np.zeros((3, 2, 2, 3), np.uint8), **arrays)
    with pytest.raises(SamplesFileError, match=message):
        read_samples_and_prompts(tmp_path / "crafted.npz")


def test_the_evaluator_reads_the_prompts_column(clip_env, tracking, images, expected):
    import pandas as pd

    _, experiment_id = tracking
    data = pd.DataFrame({"image": list(images), "caption": PROMPTS})
    with mlflow.start_run(experiment_id=experiment_id):
        result = mlflow.models.evaluate(data=data, model_type="image-generation", evaluators=["genmetrics"],
                                        evaluator_config={"genmetrics": {"image_column": "image",
                                                                         "prompts_column": "caption",
                                                                         "metrics": ["clip_score"],
                                                                         "batch_size": 2}})
    # the evaluator reads the rows one image at a time: other batches than the oracle's, float32 rounding apart
    assert result.metrics["gen/clip_score"] == pytest.approx(expected, abs=1e-5)


def test_two_ranks_pair_their_own_prompts(clip_env, images, expected, tmp_path):
    """torchrun, 2 ranks (gloo): rank r scores its own share of the samples with its own prompts (3 and 2); every
    rank returns the single-process numbers and the hash of all prompts in rank order."""
    import json

    np.save(tmp_path / "images.npy", images)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", JOBS,
               str(tmp_path), json.dumps(PROMPTS)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert seen[0] == seen[1]
    # the same batches as the oracle's; one thread per rank (OMP_NUM_THREADS=1) rounds float32 sums differently
    assert seen[0]["metrics"]["gen/clip_score"] == pytest.approx(expected, abs=1e-5)
    assert seen[0]["prompts_sha256"] == prompts_sha256(PROMPTS)


def test_an_interrupted_step_is_spooled_with_its_prompts(tmp_path, genmetrics_home):
    """The spool keeps the prompts beside the samples of a step an interrupt left unscored (deferred clip_score)."""
    from genmetrics.plugin import spool
    from genmetrics.plugin.samples import read_samples_and_prompts

    images = tiny_images(3, seed=4)
    op = spool.Sender(f"sqlite:///{tmp_path / 'm.db'}").spool_samples("run", 2, images, None, ["a", "b é", ""])
    samples, targets, stored = read_samples_and_prompts(os.path.join(spool.Sender(f"sqlite:///{tmp_path / 'm.db'}")
                                                                     .directory, op["npz"]))
    assert stored == ["a", "b é", ""] and targets is None
    np.testing.assert_array_equal(samples, images)
