"""Property test of the statistics reader (issue 11): random corruptions of a valid small file (truncation,
flipped bytes, datasets with other shapes/dtypes/values, attributes of other types, deletions) end in a
RefStatsFormatError or in a file that passes every check and gives a consistent, non-negative FID; never
another exception or a hang. D = 8 keeps each example ~10 ms; the whole test runs in seconds."""
import functools
import tempfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from genmetrics.registry import RefStatsFormatError, ReferenceStats, read_refstats, write_refstats
from genmetrics.stats import GaussianMoments, frechet_distance, sqrtm_psd

DIM = 8
DATASETS = ("mu", "sigma", "n", "sum", "outer_sum", "sqrt_sigma", "features")
ATTRIBUTES = ("format", "format_version", "dataset", "mode", "version", "num_samples", "resolution", "source")
META = {"dataset": "toy", "split": "train", "resolution": 32, "mode": "clean",
        "feature_extractor": "inception-v3-compat", "feature_layer": "pool3", "source": "fuzz"}


@functools.lru_cache(maxsize=1)
def _original():
    """(bytes of a valid file with every dataset, its ReferenceStats); not a fixture, so that hypothesis does not
    print the bytes with each failing example."""
    x = np.random.default_rng(0).normal(size=(40, DIM)).astype(np.float32) + 2.0
    stats = ReferenceStats.from_moments(GaussianMoments.from_features(x), features=x, meta=META)
    stats.sqrt_sigma = sqrtm_psd(stats.sigma)
    with tempfile.TemporaryDirectory() as folder:
        path = write_refstats(f"{folder}/valid.h5", stats)
        return open(path, "rb").read(), read_refstats(path, full=True, lazy_features=False)


_shapes = st.lists(st.sampled_from([0, 1, DIM - 1, DIM, DIM + 1, 40, 2 ** 31]), max_size=3).map(tuple)
_dtypes = st.sampled_from(["f8", "f4", "f2", "i8", "u1", "S4", "c16", "?"])
_fills = st.sampled_from(["random", "zeros", "nan", "inf", "huge", "unwritten"])
_attribute_values = st.one_of(
    st.integers(-2 ** 63, 2 ** 63 - 1), st.floats(), st.booleans(),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12), st.binary(max_size=12),
    st.lists(st.integers(0, 3), min_size=1, max_size=3).map(np.array))
_corruptions = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                        min_size=1, max_size=8)),
    st.tuples(st.just("dataset"), st.sampled_from(DATASETS), _shapes, _dtypes, _fills),
    st.tuples(st.just("scale"), st.sampled_from(DATASETS), st.sampled_from([-1.0, 0.0, 1 + 1e-12, 1.001, 1e300])),
    st.tuples(st.just("attribute"), st.sampled_from(ATTRIBUTES), _attribute_values),
    st.tuples(st.just("delete"), st.sampled_from(DATASETS + ATTRIBUTES)),
)


def _values(shape, dtype, fill, rng):
    size = int(np.prod(shape, dtype=np.float64))
    if fill == "unwritten" or size > 10_000:
        return None
    base = {"random": rng.normal(size=shape) * 3, "zeros": np.zeros(shape), "nan": np.full(shape, np.nan),
            "inf": np.full(shape, np.inf), "huge": np.full(shape, 1e300)}[fill]
    if dtype == "S4":
        return np.full(shape, b"abcd", dtype="S4")
    with np.errstate(all="ignore"):
        return base.astype(dtype) if np.dtype(dtype).kind in "fc?" else np.nan_to_num(base).astype(dtype)


def _apply(path, corruption, data, rng):
    """Corrupt the file at `path` (holding `data`)."""
    kind = corruption[0]
    if kind == "truncate":
        open(path, "wb").write(data[: int(len(data) * corruption[1])])
    elif kind == "flip":
        flipped = bytearray(data)
        for where, mask in corruption[1]:
            flipped[int(where * len(data))] ^= mask
        open(path, "wb").write(bytes(flipped))
    else:
        with h5py.File(path, "r+") as f:
            _edit(f, corruption, rng)


def _edit(f, corruption, rng):
    kind, name = corruption[:2]
    if kind == "delete":
        del (f if name in DATASETS else f.attrs)[name]
    elif kind == "attribute":
        f.attrs[name] = corruption[2]
    elif kind == "scale":
        f[name][...] = f[name][()] * corruption[2]
    else:
        _, _, shape, dtype, fill = corruption
        del f[name]
        values = _values(shape, dtype, fill, rng)
        if values is None:
            chunks = tuple(max(1, min(d, 64)) for d in shape) if shape and all(shape) else None
            f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)
        else:
            f.create_dataset(name, data=values)


def _check_consistent(stats, reference):
    """A file that passes every check gives the FID its moments define: with or without its cached root, >= 0."""
    plain = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
    scale = 1 + abs(plain) + np.trace(stats.sigma) + np.trace(reference.sigma)
    assert plain >= -1e-9 * scale
    if stats.sqrt_sigma is not None:
        cached = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma, sqrt_sigma1=stats.sqrt_sigma)
        assert abs(cached - plain) <= 1e-7 * scale
    if stats.features is not None and len(stats.features) == stats.n:
        np.testing.assert_allclose(stats.features.mean(axis=0, dtype=np.float64), stats.mu, rtol=0, atol=1e-5)


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(corruption=_corruptions, seed=st.integers(0, 2 ** 16))
def test_any_corruption_is_a_clear_error_or_a_valid_file(tmp_path, corruption, seed):
    data, reference = _original()
    path = tmp_path / "corrupt.h5"
    open(path, "wb").write(data)
    try:
        _apply(path, corruption, data, np.random.default_rng(seed))
    except (TypeError, ValueError, OSError, KeyError):
        assume(False)  # h5py cannot write this corruption; not a case for the reader
    try:
        stats = read_refstats(path, full=True)
    except RefStatsFormatError as error:
        message = str(error)
        assert str(path) in message and "\n" not in message
        return
    _check_consistent(stats, reference)
