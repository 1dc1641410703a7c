"""LPIPS against the lpips package with the same (seeded random) backbone weights; weight files and errors."""
import dataclasses
import os
import warnings

import lpips
import numpy as np
import pytest
import torch
import torchvision

from genmetrics.stats import LPIPS
from genmetrics.stats.networks.lpips import LPIPS_NETS
from genmetrics.stats.download import file_sha256
from genmetrics.stats.networks.weights import KNOWN_WEIGHTS, URL_BASE_ENV, WeightsUnavailableError, weights_dir

TOL = 1e-5


@pytest.fixture(scope="module")
def backbone_files(tmp_path_factory):
    """Seeded random torchvision backbones: {net: (path of the state dict in torchvision's key layout, tensors)}.

    Only the ``features.*`` tensors are stored (what LPIPS uses; the classifier would make the files large).
    """
    folder = tmp_path_factory.mktemp("backbones")
    files = {}
    for net, spec in LPIPS_NETS.items():
        torch.manual_seed(len(net))
        model = getattr(torchvision.models, spec.architecture)(weights=None)
        state = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
        path = str(folder / f"{spec.architecture}-random.pth")
        torch.save(state, path)
        files[net] = (path, state)
    return files


def _peer(net, state):
    """lpips.LPIPS with its v0.1 linear layers (package files, no network) and our random backbone tensors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation inside lpips
        peer = lpips.LPIPS(net=net, pnet_rand=True, pretrained=True, verbose=False)
    # lpips' slices keep torchvision's module indices as names: net.slice2.4.weight <- features.4.weight
    peer.net.load_state_dict({key: state["features." + key.split(".", 1)[1]] for key in peer.net.state_dict()})
    return peer.eval()


@pytest.fixture(scope="module")
def photo_batches(photos):
    """Real photos in [-1, 1] at 64 and 256 px with a noisy counterpart: {size: (x, y)} (2 images each)."""
    rng = np.random.default_rng(0)
    out = {}
    for size in (64, 256):
        x = torch.stack([
            torch.nn.functional.interpolate(torch.from_numpy(p).permute(2, 0, 1)[None].float(), size=(size, size),
                                            mode="area")[0] for p in photos[:2]]) / 127.5 - 1
        noisy = (x + torch.from_numpy(rng.normal(0, 0.2, x.shape)).float()).clamp(-1, 1)
        out[size] = (x, noisy)
    return out


@pytest.mark.parametrize("net", ["alex", "squeeze", "vgg"])
def test_lpips_equals_lpips_package(net, backbone_files, photo_batches):
    path, state = backbone_files[net]
    ours, peer = LPIPS(net, backbone_weights=path), _peer(net, state)
    worst = 0.0
    with torch.no_grad():
        for size, (x, y) in photo_batches.items():
            values = ours(x, y)
            assert values.shape == (2,) and (values > 0).all()
            worst = max(worst, float((values - peer(x, y).view(-1)).abs().max()))
            same = ours(x, x)
            assert float(same.abs().max()) == 0.0
            assert torch.allclose(ours(y, x), values, atol=1e-7, rtol=0)
    print(f"LPIPS {net}: max |ours - lpips| = {worst:.2e}")
    assert worst < TOL


def test_normalize_and_explicit_lin_weights(backbone_files, photo_batches):
    path, _ = backbone_files["squeeze"]
    x, y = photo_batches[64]
    package_file = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "squeeze.pth")
    signed = LPIPS("squeeze", backbone_weights=path)
    unit = LPIPS("squeeze", backbone_weights=path, lin_weights=package_file, normalize=True)
    with torch.no_grad():
        assert torch.allclose(signed(x, y), unit((x + 1) / 2, (y + 1) / 2), atol=1e-6, rtol=0)
    x.requires_grad_(True)
    signed(x, y).sum().backward()  # usable as a loss: gradients reach the inputs, parameters are frozen
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in signed.parameters())


def test_bad_inputs_are_clear_errors(backbone_files):
    path, _ = backbone_files["squeeze"]
    model = LPIPS("squeeze", backbone_weights=path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with pytest.raises(ValueError, match="normalize=True"):
        model(x * 255, x)
    with pytest.raises(ValueError, match="same shape"):
        model(x, x[:, :, :-1])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(x[:, :1], x[:, :1])
    with pytest.raises(ValueError, match="at least 17x17"):
        model(x[:, :, :16, :16], x[:, :, :16, :16])
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(x, nan)
    with pytest.raises(TypeError, match="float tensor"):
        model(x.to(torch.uint8), x.to(torch.uint8))
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        LPIPS("resnet", backbone_weights=path)
    with pytest.raises(ValueError, match="not a torchvision alexnet state dict"):
        LPIPS("alex", backbone_weights=path)  # squeezenet tensors
    with pytest.raises(FileNotFoundError):
        LPIPS("alex", backbone_weights=path + ".missing")


@pytest.fixture
def weights_env(tmp_path, monkeypatch, http_server):
    """Empty cache and torch.hub folder; known backbone URLs redirected to the loopback server."""
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("GENMETRICS_OFFLINE", raising=False)
    monkeypatch.setenv(URL_BASE_ENV, http_server.url + "/mirror")
    return http_server


def _serve_as_known(server, monkeypatch, path, prefix):
    """Serve `path` under a torchvision-style name alexnet-test-<prefix>.pth, the known alex backbone file."""
    entry = dataclasses.replace(KNOWN_WEIGHTS["lpips-alex-backbone"], filename=f"alexnet-test-{prefix}.pth")
    monkeypatch.setitem(KNOWN_WEIGHTS, "lpips-alex-backbone", entry)
    with open(path, "rb") as f:
        server.files[f"/mirror/{entry.filename}"] = f.read()
    return f"/mirror/{entry.filename}", os.path.join(weights_dir(), entry.filename)


def test_backbone_download_into_cache(weights_env, monkeypatch, backbone_files, photo_batches):
    path, _ = backbone_files["alex"]
    url_path, cached = _serve_as_known(weights_env, monkeypatch, path, file_sha256(path)[:8])
    downloaded = LPIPS("alex", progress=False)  # linear layers: the installed lpips package's file
    assert os.path.isfile(cached) and file_sha256(cached) == file_sha256(path)
    x, y = photo_batches[64]
    with torch.no_grad():
        assert torch.equal(downloaded(x, y), LPIPS("alex", backbone_weights=path)(x, y))
    requests = len(weights_env.get_requests(url_path))
    LPIPS("alex", progress=False)  # second time from the cache
    assert requests == 1 and len(weights_env.get_requests(url_path)) == requests


def test_backbone_with_wrong_sha256_is_refused(weights_env, monkeypatch, backbone_files):
    path, _ = backbone_files["alex"]
    wrong = "0" * 8 if not file_sha256(path).startswith("0" * 8) else "1" * 8
    _, cached = _serve_as_known(weights_env, monkeypatch, path, wrong)
    with pytest.raises(ValueError, match=f"starts with {wrong}"):
        LPIPS("alex", progress=False)
    assert not os.path.exists(cached)


def test_offline_without_backbone_says_how_to_provide_it(weights_env, monkeypatch):
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"alexnet-owt-7be5be79\.pth.*backbone_weights="):
        LPIPS("alex", progress=False)
    assert not weights_env.requests
