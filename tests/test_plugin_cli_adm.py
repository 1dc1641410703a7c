"""`genmetrics fid REF SAMPLES --suite adm`: the evaluator's five lines, checked against a NumPy version of its rules
on the same weights (the real FID weights with a seeded classifier head), on files in the evaluator's formats."""
import os
import subprocess
import sys

import numpy as np
import pytest

LABELS = ("Inception Score", "FID", "sFID", "Precision", "Recall")


def _psd(rng, dim):
    a = rng.normal(size=(dim, dim + 4))
    return a @ a.T / (dim + 4)


@pytest.fixture(scope="module")
def files(photos, tmp_path_factory):
    """A reference batch (arr_0 + stored moments) and a samples .npz, both uint8 NHWC, in the evaluator's layout."""
    folder = tmp_path_factory.mktemp("adm-cli")
    rng = np.random.default_rng(0)
    ref_images = np.stack([p[:48, :48] for p in photos[:6]])
    sample_images = np.stack([p[-48:, -48:] for p in photos[:7]])
    ref, samples = str(folder / "VIRTUAL_tiny.npz"), str(folder / "samples.npz")
    np.savez(ref, ref_images, mu=rng.normal(size=2048) * 0.1, sigma=_psd(rng, 2048) * 0.01,
             mu_s=rng.normal(size=2023) * 0.1, sigma_s=_psd(rng, 2023) * 0.01)
    np.savez(samples, sample_images)
    return ref, samples, ref_images, sample_images


def _run(ref, samples, weights):
    env = {**os.environ, "GENMETRICS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "genmetrics.plugin.cli", "fid", ref, samples, "--suite", "adm",
                           "--weights", weights, "--device", "cpu"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == list(LABELS)
    return dict(line.split(": ", 1) for line in lines)


def _frechet(x, mu2, s2):
    """FID of the rows of `x` against (mu2, s2): |mu1 - mu2|^2 + tr s1 + tr s2 - 2 tr sqrt(s1 s2), where with
    s1 = C^T C (C = centred rows / sqrt(n - 1)) tr sqrt(s1 s2) = sum sqrt(eig(C s2 C^T)), an n x n matrix."""
    c = (x - x.mean(0)) / np.sqrt(len(x) - 1)
    eig = np.clip(np.linalg.eigvalsh(c @ s2 @ c.T), 0, None)
    return float(((x.mean(0) - mu2) ** 2).sum() + (c ** 2).sum() + np.trace(s2) - 2 * np.sqrt(eig).sum())


def _in_balls(balls, queries, k):
    """The evaluator's rule, brute force in float64: share of queries within some ball (squared radius = squared
    distance to the k-th nearest other ball centre, closed)."""
    d_bb = ((balls[:, None] - balls[None]) ** 2).sum(-1)
    radii = np.sort(d_bb, axis=1)[:, k]  # column 0 is the point itself
    d_qb = ((queries[:, None] - balls[None]) ** 2).sum(-1)
    return float(np.mean((d_qb <= radii[None]).any(axis=1)))


def test_the_adm_suite_prints_the_evaluators_five_numbers(files, inception_with_head, inception_with_head_path):
    from genmetrics.stats import extract_features

    ref, samples, ref_images, sample_images = files
    got = _run(ref, samples, inception_with_head_path)
    kw = dict(model=inception_with_head, mode="legacy_tensorflow", progress=False)
    mine = extract_features(sample_images, layers=["pool3", "spatial", "logits"], **kw)
    theirs = extract_features(ref_images, **kw)["pool3"].numpy().astype(np.float64)
    pool3, spatial = mine["pool3"].numpy().astype(np.float64), mine["spatial"].numpy().astype(np.float64)
    with np.load(ref) as data:
        fid = _frechet(pool3, data["mu"], data["sigma"])
        sfid = _frechet(spatial, data["mu_s"], data["sigma_s"])
    logits = mine["logits"].numpy().astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    inception_score = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0, keepdims=True))), 1)))
    assert float(got["Inception Score"]) == pytest.approx(inception_score, rel=1e-5)
    assert float(got["FID"]) == pytest.approx(fid, rel=1e-4)
    assert float(got["sFID"]) == pytest.approx(sfid, rel=1e-4)
    assert float(got["Precision"]) == _in_balls(theirs, pool3, 3)
    assert float(got["Recall"]) == _in_balls(pool3, theirs, 3)


def test_without_the_classifier_head_the_is_line_says_why(files, fid_weights_path):
    ref, samples, _, _ = files
    got = _run(ref, samples, fid_weights_path)
    assert got["Inception Score"].startswith("not computed (") and "head" in got["Inception Score"]
    assert all(float(got[label]) >= 0 for label in LABELS[1:])
