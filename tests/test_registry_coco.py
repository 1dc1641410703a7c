"""COCO-30k: the pairs chosen by the documented rule from a folder in COCO's own format, and the prompts kept."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from genmetrics import registry


@pytest.fixture(scope="module")
def coco_root(photos, tmp_path_factory):
    """A tiny COCO 2014 folder: annotations/captions_val2014.json and val2014/*.jpg (real photos, odd sizes)."""
    root = tmp_path_factory.mktemp("coco")
    (root / "val2014").mkdir()
    (root / "annotations").mkdir()
    images, annotations = [], []
    for i, photo in enumerate(photos[:5]):
        image_id = 1000 + 37 * i
        name = f"COCO_val2014_{image_id:012d}.jpg"
        Image.fromarray(photo[: 60 + 7 * i, : 90 - 5 * i]).save(root / "val2014" / name, quality=95)
        images.append({"id": image_id, "file_name": name, "height": 60 + 7 * i, "width": 90 - 5 * i})
        annotations += [{"id": 500 - i, "image_id": image_id, "caption": f"  A photo\\n number  {i} &amp; more "},
                        {"id": 900 + i, "image_id": image_id, "caption": f"second caption {i}"}]
    data = {"images": images, "annotations": annotations[::-1]}
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(data))
    return str(root)


def _expected_pairs(root):
    data = json.loads(open(os.path.join(root, "annotations", "captions_val2014.json")).read())
    captions = {}
    for ann in sorted(data["annotations"], key=lambda a: a["id"], reverse=True):
        captions[ann["image_id"]] = " ".join(ann["caption"].split())  # the smallest id is written last
    order = sorted(captions, key=lambda i: hashlib.sha256(f"coco2014-30k:{i}".encode()).hexdigest())
    names = {image["id"]: image["file_name"] for image in data["images"]}
    return [(i, names[i], captions[i]) for i in order]


def _square_256(path):
    image = Image.open(path).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((256, 256), Image.BICUBIC))


def test_coco30k_builds_with_the_rule_and_keeps_the_prompts(coco_root, inception, tmp_path):
    from genmetrics.stats import extract_features

    out = str(tmp_path / "coco30k.h5")
    stats = registry.build("coco2014_30k", out, root=coco_root, mode="clean", features=True, model=inception,
                           progress=False)
    pairs = _expected_pairs(coco_root)
    assert registry.prompts(out) == [caption for _, _, caption in pairs]
    assert pairs[0][2].startswith("A photo") and "  " not in pairs[0][2]
    assert stats.meta["prompt_count"] == 5 and stats.meta["selection"].startswith("coco2014-30k v1")
    assert stats.meta["dataset"] == "coco2014_30k" and stats.meta["resolution"] == 256
    images = np.stack([_square_256(os.path.join(coco_root, "val2014", name)) for _, name, _ in pairs])
    expected = extract_features(images, model=inception, mode="clean", progress=False)["pool3"].numpy()
    np.testing.assert_allclose(registry.read_refstats(out).features, expected, rtol=0, atol=1e-4)


def test_prompts_of_a_reference_without_them_is_a_clear_error(tmp_path):
    from genmetrics.registry.refstats import ReferenceStats, write_refstats

    meta = dict(dataset="d", split="s", resolution=8, mode="clean", feature_extractor="inception-v3-compat",
                feature_layer="pool3")
    path = write_refstats(tmp_path / "plain.h5", ReferenceStats(np.zeros(3), np.eye(3), 5, meta=meta))
    with pytest.raises(ValueError, match="stores no prompts"):
        registry.prompts(path)


def test_stored_prompts_are_validated(tmp_path):
    import h5py

    from genmetrics.registry.refstats import ReferenceStats, write_refstats

    meta = dict(dataset="d", split="s", resolution=8, mode="clean", feature_extractor="inception-v3-compat",
                feature_layer="pool3")
    path = write_refstats(tmp_path / "p.h5", ReferenceStats(np.zeros(3), np.eye(3), 5, meta=meta,
                                                            prompts=["a cat", "ein Hund ü", ""]))
    assert registry.read_refstats(path, full=True).prompts == ["a cat", "ein Hund ü", ""]
    with h5py.File(path, "a") as f:
        f["prompts_utf8"][0] = ord("A")
    with pytest.raises(ValueError, match="prompts_sha256"):
        registry.read_refstats(path).prompts
    with h5py.File(path, "a") as f:
        f["prompt_ends"][1] = 1
    with pytest.raises(ValueError, match="increasing offsets"):
        registry.read_refstats(path).prompts


def test_a_folder_without_captions_says_what_coco_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions_val2014.json"):
        registry.build("coco2014_30k", str(tmp_path / "x.h5"), root=str(tmp_path), progress=False)
