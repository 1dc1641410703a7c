"""IS and LPIPS through score_samples / log_gen_metrics on their computing paths, with real weight files.

The real IS head (pytorch-fid's release file) and the real AlexNet backbone (torchvision's file) cannot be
downloaded here, so both are replaced by seeded random tensors in the exact file layouts those files have:
an FID Inception state dict (pool3 weights of the offline TorchScript, pytorch-fid key names) plus a random
1008-way ``fc``, and a torchvision ``alexnet`` state dict. The plugin's numbers are compared with peers run
on the same tensors: torch-fidelity's IS formula on the same logits, and the ``lpips`` package with the
same backbone. Photos are 64x64 crops-by-resize of scikit-image's real photographs.
"""

import numpy as np
import pytest
import torch
import torchvision
from mlflow import MlflowClient
from PIL import Image

from genmetrics.plugin import log_gen_metrics, score_samples
from genmetrics.stats import LPIPS, extract_features, inception_score_from_logits, lpips_diversity

IS_SPLITS = 2
DIVERSITY_PAIRS = 6
SEED = 3


@pytest.fixture(autouse=True)
def offline_home(monkeypatch, tmp_path):
    """Nothing may download, and no cache outside the test's own folder is consulted."""
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "genmetrics-home"))
    monkeypatch.delenv("GENMETRICS_INCEPTION_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def small_photos(photos):
    """8 real photos resized to 64x64, uint8 (N, 64, 64, 3)."""
    return np.stack([np.asarray(Image.fromarray(p).resize((64, 64), Image.BICUBIC)) for p in photos[:8]])


@pytest.fixture(scope="module")
def alexnet_path(tmp_path_factory):
    """A seeded random torchvision AlexNet state dict (torchvision's key layout)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips-backbone") / "alexnet-random.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return str(path)


def _reference_is(logits, splits):
    """torch-fidelity's IS formula on the same logits, same consecutive splits (no shuffling)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    result = isc_features_to_metric(logits, splits=splits, shuffle=False)
    return result[KEY_METRIC_ISC_MEAN], result[KEY_METRIC_ISC_STD]


def _lpips_package_model(alexnet_path):
    """The lpips package's LPIPS(alex) with its own v0.1 lin layers and our backbone tensors."""
    import lpips

    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    features = torch.load(alexnet_path, weights_only=True)
    state = {}
    for name in model.net.state_dict():  # "slice<k>.<torchvision features index>.<weight|bias>"
        _, index, kind = name.split(".")
        state[name] = features[f"features.{index}.{kind}"]
    model.net.load_state_dict(state)
    return model


def _float01(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def test_inception_score_with_a_head_equals_the_stats_function_and_torch_fidelity(
        small_photos, inception_with_head, inception_with_head_path):
    images = small_photos[:6]
    model = inception_with_head
    result = score_samples(images, metrics=("is",), model=model, is_splits=IS_SPLITS, device="cpu")
    assert set(result.metrics) == {"gen/is", "gen/is_std"}
    assert not any(key.startswith("gen/skipped") for key in result.tags)
    assert result.params["gen/is_splits"] == str(IS_SPLITS)

    features = extract_features(images, model=model, progress=False)
    logits, pool3 = features["logits"], features["pool3"]
    head = torch.load(inception_with_head_path, weights_only=True)["fc.weight"]
    # the head is our fc.weight without the bias (the IS logits of the OpenAI code and torch-fidelity)
    torch.testing.assert_close(logits, pool3 @ head.t(), rtol=1e-5, atol=1e-5)

    ours = inception_score_from_logits(logits, splits=IS_SPLITS)
    peer = _reference_is(logits, IS_SPLITS)
    assert result.metrics["gen/is"] == pytest.approx(ours[0], rel=1e-6)
    assert result.metrics["gen/is_std"] == pytest.approx(ours[1], rel=1e-6)
    assert result.metrics["gen/is"] == pytest.approx(peer[0], rel=1e-6)
    assert result.metrics["gen/is_std"] == pytest.approx(peer[1], rel=1e-6)
    assert 1.0 < result.metrics["gen/is"] < 6.0 and result.metrics["gen/is_std"] > 0


def test_paired_lpips_equals_the_lpips_package_with_the_same_backbone(small_photos, alexnet_path):
    samples, targets = small_photos[:4], small_photos[4:8]
    result = score_samples(samples, metrics=("lpips",), targets=targets, lpips_backbone_weights=alexnet_path,
                           device="cpu")
    assert set(result.metrics) == {"gen/lpips"}
    assert result.params["gen/image_metrics"] == "paired"

    with torch.no_grad():
        peer = _lpips_package_model(alexnet_path)(_float01(samples) * 2 - 1, _float01(targets) * 2 - 1)
    assert result.metrics["gen/lpips"] == pytest.approx(float(peer.double().mean()), rel=1e-5)
    assert result.metrics["gen/lpips"] > 0


def test_lpips_diversity_equals_the_mean_over_the_same_seeded_pairs(small_photos, alexnet_path):
    samples = small_photos[:5]
    result = score_samples(samples, metrics=("lpips",), lpips_backbone_weights=alexnet_path, device="cpu",
                           diversity_pairs=DIVERSITY_PAIRS, seed=SEED)
    assert set(result.metrics) == {"gen/lpips_diversity"}
    assert result.params["gen/diversity_pairs"] == str(DIVERSITY_PAIRS)

    model = LPIPS(net="alex", backbone_weights=alexnet_path, normalize=True)
    expected = lpips_diversity(_float01(samples), model, pairs=DIVERSITY_PAIRS, seed=SEED)
    assert result.metrics["gen/lpips_diversity"] == pytest.approx(expected.mean, rel=1e-6)
    assert result.metrics["gen/lpips_diversity"] > 0


def _logged_metrics(mlflow_server, **kwargs):
    """log_gen_metrics to a new run on the real server; returns (returned dict, metrics read back)."""
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("is-lpips") or client.get_experiment(
        client.create_experiment("is-lpips"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    returned = log_gen_metrics(run_id=run_id, client=client, step=7, log_grid=False, device="cpu", **kwargs)
    client.set_terminated(run_id)
    history = {key: client.get_metric_history(run_id, key) for key in returned}
    return returned, history


def test_inception_score_logged_to_the_mlflow_server(mlflow_server, monkeypatch, small_photos,
                                                    inception_with_head, inception_with_head_path):
    """The head is found through GENMETRICS_INCEPTION_WEIGHTS (explicit "is": pool3-only weights would raise)."""
    monkeypatch.setenv("GENMETRICS_INCEPTION_WEIGHTS", inception_with_head_path)
    images = small_photos[:6]
    returned, history = _logged_metrics(mlflow_server, samples=images, metrics=("is",), is_splits=IS_SPLITS)
    expected = score_samples(images, metrics=("is",), model=inception_with_head,
                             is_splits=IS_SPLITS, device="cpu").metrics
    assert set(returned) == {"gen/is", "gen/is_std"}
    for key, value in expected.items():
        assert returned[key] == pytest.approx(value, rel=1e-6)
        assert [(m.value, m.step) for m in history[key]] == [(pytest.approx(returned[key], rel=1e-12), 7)]


def test_lpips_logged_to_the_mlflow_server(mlflow_server, small_photos, alexnet_path):
    samples, targets = small_photos[:4], small_photos[4:8]
    returned, history = _logged_metrics(mlflow_server, samples=samples, targets=targets, metrics=("lpips",),
                                        lpips_backbone_weights=alexnet_path)
    expected = score_samples(samples, metrics=("lpips",), targets=targets, lpips_backbone_weights=alexnet_path,
                             device="cpu").metrics
    assert set(returned) == {"gen/lpips"}
    assert returned["gen/lpips"] == pytest.approx(expected["gen/lpips"], rel=1e-12)
    assert [(m.value, m.step) for m in history["gen/lpips"]] == [(pytest.approx(returned["gen/lpips"], rel=1e-12), 7)]
