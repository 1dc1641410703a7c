"""Copy detection: exact, JPEG (q=90) and 1-pixel-shifted copies of reference photos are flagged with the right
indices in real FID Inception features, fresh photos of the same kind are not; the blocked nearest-neighbour
search equals brute force; bad input is refused with one line.

Data: 192 px tiles of ten scikit-image photographs (40 tiles), split by a fixed permutation into 20
references and 20 fresh tiles. Inception pool3 features are sensitive to JPEG: on these tiles 17 of 20
JPEG q=90 copies score below 0.5 (the others 0.55-0.59), all 20 shifted copies do, no fresh tile does
(lowest 0.60). The exact assertions below use copies of references whose perturbed score has a margin.
"""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from tolerances import sum_tol

from genmetrics.stats import copy_detection, extract_features
from genmetrics.stats.metrics.copy_detection import nearest_neighbours

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera", "moon", "cell", "clock",
          "coins")
TILE = 192


def _tiles():
    import skimage.data

    tiles = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
        for y in range(0, img.shape[0] - TILE + 1, TILE):
            for x in range(0, img.shape[1] - TILE + 1, TILE):
                tiles.append(np.ascontiguousarray(img[y:y + TILE, x:x + TILE]))
    return tiles


def jpeg(img, quality=90):
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def shift(img):
    """One-pixel horizontal shift (the last column wraps to the first)."""
    return np.roll(img, 1, axis=1)


@pytest.fixture(scope="module")
def tile_sets():
    tiles = _tiles()
    assert len(tiles) == 40
    order = np.random.default_rng(1).permutation(len(tiles))
    return [tiles[i] for i in order[:20]], [tiles[i] for i in order[20:]]


@pytest.fixture(scope="module")
def features(inception, tile_sets):
    """pool3 features (float32 numpy) of references, fresh tiles and the JPEG / shifted copy of every reference."""
    references, fresh = tile_sets
    batch = references + fresh + [jpeg(t) for t in references] + [shift(t) for t in references]
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
    pool3 = extract_features(x, model=inception, mode="clean", progress=False)["pool3"].numpy()
    return {"references": pool3[:20], "fresh": pool3[20:40], "jpeg": pool3[40:60], "shift": pool3[60:80]}


def test_copies_are_flagged_with_their_indices(features):
    fresh, ref = features["fresh"], features["references"]
    # sample set: 12 fresh tiles with six copies at known places
    copies = {2: ref[4], 5: features["jpeg"][1], 7: features["jpeg"][15], 11: features["jpeg"][17],
              13: features["shift"][14], 16: features["shift"][19]}
    sources = {2: 4, 5: 1, 7: 15, 11: 17, 13: 14, 16: 19}
    rows, fresh_rows = [], iter(fresh[:12])
    for i in range(18):
        rows.append(copies[i] if i in copies else next(fresh_rows))
    result = copy_detection(np.stack(rows), ref)
    assert sorted(result["indices"].tolist()) == sorted(copies)
    assert result["indices"][0] == 2  # the exact copy is the most suspicious
    # Its distance is 0 up to rounding: |a|^2 + |a|^2 - 2 a.a (about a centre c, |a - c| <= |a| + |c|), three
    # sums of D terms in float64 (the GEMM's order is not the row norms' order), so d^2 <= sum_tol(D + 2,
    # 4 (|a| + |c|)^2) and the score d / rho below sqrt of that over rho (observed 4e-8; a JPEG copy ~0.3).
    a, c = ref[4].astype(np.float64), ref.astype(np.float64).mean(axis=0)
    norm = np.linalg.norm(a) + np.linalg.norm(c)
    bound = np.sqrt(sum_tol(a.size + 2, 4 * norm ** 2)) / result["reference_nn_distances"][4]
    assert 0.0 <= result["scores"][2] <= bound
    assert result["fraction"] == pytest.approx(6 / 18)
    assert all(result["nearest"][i] == j for i, j in sources.items())
    assert np.all(np.diff(result["scores"][result["indices"]]) >= 0)


def test_fresh_tiles_are_not_flagged(features):
    result = copy_detection(features["fresh"], features["references"])
    assert result["fraction"] == 0.0 and result["indices"].size == 0
    assert result["scores"].min() > 0.55


def test_detection_rates_on_all_references(features):
    """The figures quoted in the module docstring: every shifted copy, most JPEG copies."""
    ref = features["references"]
    assert copy_detection(features["shift"], ref)["fraction"] == 1.0
    assert copy_detection(features["jpeg"], ref)["fraction"] >= 0.8
    assert copy_detection(ref, ref)["fraction"] == 1.0  # exact copies: score 0


def test_blocked_search_equals_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(37, 9)), rng.normal(size=(23, 9))
    full = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    for chunk in (1, 5, 64):
        distances, indices = nearest_neighbours(a, b, chunk_size=chunk)
        np.testing.assert_array_equal(indices, full.argmin(1))
        np.testing.assert_allclose(distances, full.min(1), rtol=1e-10)
        self_full = np.sqrt(((b[:, None, :] - b[None, :, :]) ** 2).sum(-1)) + np.diag([np.inf] * len(b))
        distances, indices = nearest_neighbours(b, b, exclude_self=True, chunk_size=chunk)
        np.testing.assert_array_equal(indices, self_full.argmin(1))
        np.testing.assert_allclose(distances, self_full.min(1), rtol=1e-10)


def test_scores_match_the_definition_and_precomputed_distances():
    rng = np.random.default_rng(1)
    ref, samples = rng.normal(size=(30, 6)), rng.normal(size=(12, 6))
    rho = np.sort(np.sqrt(((ref[:, None] - ref[None]) ** 2).sum(-1)), axis=1)[:, 1]
    d = np.sqrt(((samples[:, None] - ref[None]) ** 2).sum(-1))
    expected = d.min(1) / rho[d.argmin(1)]
    result = copy_detection(samples, ref, threshold=1.0, chunk_size=4)
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-10)
    again = copy_detection(samples, ref, threshold=1.0, reference_nn_distances=result["reference_nn_distances"])
    np.testing.assert_array_equal(again["indices"], result["indices"])
    assert result["fraction"] == pytest.approx(np.mean(expected < 1.0))


def test_duplicated_references():
    ref = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]])
    result = copy_detection(np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 4.0]]), ref)
    assert result["scores"][0] == 0.0 and np.isinf(result["scores"][1])
    assert result["indices"].tolist() == [0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(sample_features=np.zeros((3, 4)), reference_features=np.zeros((5, 3))), "same extractor"),
    (dict(sample_features=np.zeros((3,)), reference_features=np.zeros((5, 3))), "sample_features must be"),
    (dict(sample_features=np.zeros((3, 3)), reference_features=np.zeros((1, 3))), "at least 2 rows"),
    (dict(sample_features=np.full((3, 3), np.nan), reference_features=np.zeros((5, 3))), "NaN"),
    (dict(sample_features=np.zeros((3, 3)), reference_features=np.eye(3), threshold=0), "threshold must be"),
    (dict(sample_features=np.zeros((3, 3)), reference_features=np.eye(3), reference_nn_distances=[1.0]),
     "reference_nn_distances must have shape"),
    (dict(sample_features=np.zeros((3, 3)), reference_features=np.eye(3), chunk_size=0), "chunk_size"),
])
def test_bad_input_is_refused_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as error:
        copy_detection(**kwargs)
    assert "\n" not in str(error.value)


def _on_grid(a):
    """a rounded to multiples of 2^-20. With |a| < 2^4 and an offset that is a multiple of 2^-20 below 2^32,
    a + offset needs fewer than 32 + 20 < 53 bits: exact in float64, the translated set itself."""
    return np.round(a * 2.0 ** 20) / 2.0 ** 20


def test_invariant_to_a_common_offset():
    """Issue 19 item 12: samples and references that share a large offset (2^27 .. 2^31 per coordinate, spread
    ~1) lost every digit in |a|^2 + |b|^2 - 2 a.b (error ~ D eps |a|^2 ~ 1e4 against squared distances ~ 1e2):
    copies were missed and fresh samples flagged. Both searches now centre on the references' mean.

    Error model: the translated sets have exactly the original distances. A computed squared distance about
    a centre c (three sums of D terms and two additions whose absolute terms add up to at most
    2 (|a - c|^2 + |b - c|^2)) is within sum_tol(D + 2, that) of the other run's, hence a distance within its
    square root (|sqrt(u) - sqrt(v)| <= sqrt(|u - v|)). The two runs' centres differ by the rounding of a mean
    of values ~2^31 (~1e-5), far below the spread: the factor 2 on the norms covers it. The flags and nearest
    references agree because the copies' scores (< 0.1) and the fresh samples' (> 0.5), and each sample's
    nearest and second-nearest distances, are separated by far more than that."""
    rng = np.random.default_rng(4)
    ref = _on_grid(rng.normal(size=(60, 32)))
    near = ref[[5, 29]] + 0.05 * rng.normal(size=(2, 32))
    samples = _on_grid(np.concatenate([ref[[3, 17, 42]], near, rng.normal(size=(10, 32))]))
    offset = 2.0 ** 27 * rng.integers(1, 16, size=32)
    base = copy_detection(samples, ref)
    shifted = copy_detection(samples + offset, torch.from_numpy(ref + offset), chunk_size=16)
    assert sorted(base["indices"].tolist()) == sorted(shifted["indices"].tolist()) == [0, 1, 2, 3, 4]
    assert shifted["fraction"] == base["fraction"] == 5 / 15
    np.testing.assert_array_equal(shifted["nearest"], base["nearest"])
    np.testing.assert_array_equal(base["nearest"][:5], [3, 17, 42, 5, 29])
    centre = ref.mean(axis=0)
    largest = max(((samples - centre) ** 2).sum(1).max(), ((ref - centre) ** 2).sum(1).max())
    tol = np.sqrt(sum_tol(32 + 2, 2 * 2 * (2 * largest)))
    assert np.abs(shifted["distances"] - base["distances"]).max() <= tol
    assert np.abs(shifted["reference_nn_distances"] - base["reference_nn_distances"]).max() <= tol
