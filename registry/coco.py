"""The COCO-30k protocol of text-to-image papers: 30,000 (image, caption) pairs of COCO 2014 validation.

Zero-shot text-to-image FID is reported against COCO 2014 validation images, sampling one image per caption for
30,000 captions. Papers pick the pairs in different ways, so numbers differ by the pick alone. This module fixes
one rule, written here and recorded in the file, so that every user of ``coco2014_30k`` samples the same captions
(``genmetrics.registry.prompts("coco2014_30k-val2014-256")``) and compares against the same images:

1. Read ``annotations/captions_val2014.json`` from the user's COCO folder (40,504 images, about 5 captions each).
2. Each image's caption is its annotation with the smallest ``id``, whitespace collapsed to single spaces.
3. Images are ordered by ``sha256("coco2014-30k:<image_id>")`` (hex, ascending), an order any language can
   reproduce, independent of random number generators; the first 30,000 are taken (all of them when a folder
   holds fewer, as the small test folders do).
4. The images (``val2014/<file_name>``) are centre-cropped to a square and resized to 256x256 (PIL bicubic with
   antialiasing), the resolution most papers evaluate at; the FID preprocessing is then ``clean`` (clean-fid's:
   PIL bicubic to 299 in float), which does not alias when downsampling, unlike the legacy TF/PyTorch resizes.

The file records the rule (``selection``), the number of pairs and ``prompts_sha256`` (the hash of the caption
list, :func:`genmetrics.registry.prompts_store.prompts_sha256`) and stores the captions themselves.
"""
import hashlib
import json
import os

import numpy as np

from .datasets import ImageSource, _digest_rows, _inside

__all__ = ["COCO30K_COUNT", "COCO30K_RESOLUTION", "SELECTION_RULE", "coco30k_pairs", "CocoCaptionsSource"]

COCO30K_COUNT = 30000
COCO30K_RESOLUTION = 256
CAPTIONS_FILE = os.path.join("annotations", "captions_val2014.json")
IMAGES_FOLDER = "val2014"
#: The largest captions file read (the real one has 6.7 MB).
MAX_CAPTIONS_BYTES = 256 << 20
SELECTION_RULE = ("coco2014-30k v1: per image the caption with the smallest annotation id, whitespace collapsed; "
                  "images ordered by sha256('coco2014-30k:<image_id>') hex ascending; the first 30000; centre crop, "
                  "PIL bicubic resize to 256")


def _order_key(image_id):
    return hashlib.sha256(f"coco2014-30k:{image_id}".encode("ascii")).hexdigest()


def _read_captions(root):
    path = os.path.join(root, CAPTIONS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: root must be the COCO folder holding {CAPTIONS_FILE} and "
                                f"{IMAGES_FOLDER}/ (from https://cocodataset.org, 2014 Val images and annotations)")
    if os.path.getsize(path) > MAX_CAPTIONS_BYTES:
        raise ValueError(f"{path} is over {MAX_CAPTIONS_BYTES} bytes; it is not COCO's captions file")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("annotations"), list):
        raise ValueError(f"{path} lacks the 'images' and 'annotations' lists of COCO's captions format")
    return data


def coco30k_pairs(root, count=COCO30K_COUNT):
    """[(image_id, file_name, caption)] by the rule of the module docstring, in sampling order."""
    data = _read_captions(root)
    files = {int(image["id"]): str(image["file_name"]) for image in data["images"]}
    first = {}
    for ann in data["annotations"]:
        image_id, ann_id = int(ann["image_id"]), int(ann["id"])
        if image_id in files and (image_id not in first or ann_id < first[image_id][0]):
            first[image_id] = (ann_id, " ".join(str(ann["caption"]).split()))
    if not first:
        raise ValueError(f"{os.path.join(root, CAPTIONS_FILE)} holds no caption of a listed image")
    chosen = sorted(first, key=_order_key)[:count]
    return [(image_id, files[image_id], first[image_id][1]) for image_id in chosen]


def _square_256(image):
    """uint8 (H, W, 3) -> the centre square, resized to 256x256 with PIL's antialiased bicubic."""
    from PIL import Image

    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(image[top:top + side, left:left + side])
    return np.asarray(square.resize((COCO30K_RESOLUTION, COCO30K_RESOLUTION), Image.BICUBIC, reducing_gap=None))


class CocoCaptionsSource(ImageSource):
    """The COCO-30k images in sampling order, 256x256, with their captions (``prompts``) and per-image digests
    (sha256 of the image file's bytes)."""

    def __init__(self, root, split="val2014"):
        if split != "val2014":
            raise ValueError(f"coco2014_30k is defined on the val2014 split, not {split!r}")
        self.root = os.path.abspath(root)
        self.pairs = coco30k_pairs(self.root)
        self.prompts = [caption for _, _, caption in self.pairs]
        self.description = f"COCO 2014 val, {len(self.pairs)} pairs ({SELECTION_RULE}), from {self.root}"
        self.extra_meta = {"selection": SELECTION_RULE, "prompt_count": len(self.prompts)}

    def __len__(self):
        return len(self.pairs)

    def _read(self, index):
        path = _inside(os.path.join(self.root, IMAGES_FOLDER), os.path.join(self.root, IMAGES_FOLDER,
                                                                              self.pairs[index][1]))
        with open(path, "rb") as f:
            return f.read()

    def batch(self, start, stop):
        import io

        from genmetrics.stats.images.image_files import load_image

        images = [_square_256(load_image(io.BytesIO(self._read(i)), self.pairs[i][1])) for i in range(start, stop)]
        return np.stack(images)

    def digests(self, start, stop, images=None):
        return _digest_rows([hashlib.sha256(self._read(i)).digest() for i in range(start, stop)])
