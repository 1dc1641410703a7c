"""Store generated samples in an MLflow run, for scoring later by a separate worker.

Convention (version 1), all inside the run:

* artifact ``genmetrics/samples/step_<step, 9+ digits>.npz``: a compressed numpy archive with
  ``samples``, uint8 (N, H, W, 3), and optionally ``targets``, uint8 (N, H, W, 3), the images the
  samples should reproduce (for paired SSIM / MS-SSIM / LPIPS). Images of different sizes are stored
  as ``samples_pixels``, uint8 (P, 3): the images' pixels, row-major, one image after the other, and
  ``samples_sizes``, int64 (N, 2): each image's (H, W) (likewise ``targets_pixels`` / ``targets_sizes``);
  readers from before this layout refuse such a file (no ``samples`` array) rather than misread it.
  Optionally the prompts of the samples (one text per sample, in order, for ``clip_score``), as in statistics
  files (:mod:`genmetrics.registry.prompts_store`): ``prompts_utf8``, uint8 (B,), their UTF-8 bytes concatenated,
  and ``prompt_ends``, int64 (N,), each prompt's end offset in it; bytes, not a pickled or ``<U`` array, checked
  on read (one non-decreasing offset per sample, the last one B; strict UTF-8). Older readers ignore them.
* tag ``genmetrics.samples.<step>`` = that artifact path. It is set only AFTER the upload has
  finished, so a tag present means the file is complete. A scorer lists the steps to score from
  the run's tags alone, without listing artifacts.
* tag ``genmetrics.scored.<step>`` is set by the scorer (``genmetrics.plugin.deferred``) after the
  metrics of that step are logged; tag ``genmetrics.failed.<step>`` (the reason) when the step's file can
  never be scored (:class:`SamplesFileError`). A step with a ``samples`` tag and neither of these is pending.

Size limit: a file's arrays may hold at most ``GENMETRICS_MAX_SAMPLES_BYTES`` bytes together (default
:data:`DEFAULT_MAX_SAMPLES_BYTES`, 4 GiB, uncompressed). The writer refuses more, and the reader checks what a
file declares (every ``.npy`` header against the zip's sizes, :func:`genmetrics.registry.npz_import.check_npz_members`)
before allocating anything; an array of more than :data:`COMPRESSIBLE_BYTES` (256 MiB) may not compress more than
64x (a decompression bomb), so reading a file allocates at most the limit.

Samples are quantised to uint8 before storing (what an image file would hold); grayscale images
are stored as RGB (the channel repeated), which is what the Inception network sees anyway. Inputs are
read by the one normaliser, :mod:`genmetrics.stats.images.image_input`.
"""
import os
import re
import tempfile
from typing import Optional, Sequence, Tuple

import numpy as np

from genmetrics.stats.environment import MAX_SAMPLES_BYTES

__all__ = ["samples_artifact_path", "logged_sample_steps", "pending_sample_steps", "to_uint8_nhwc", "image_shapes",
           "write_samples_file", "read_samples_file", "read_samples_and_prompts", "log_gen_samples", "SAMPLES_DIR",
           "SAMPLES_TAG_PREFIX",
           "SCORED_TAG_PREFIX", "FAILED_TAG_PREFIX", "SamplesFileError", "max_samples_bytes",
           "DEFAULT_MAX_SAMPLES_BYTES", "COMPRESSIBLE_BYTES"]

SAMPLES_DIR = "genmetrics/samples"
SAMPLES_TAG_PREFIX = "genmetrics.samples."
SCORED_TAG_PREFIX = "genmetrics.scored."
FAILED_TAG_PREFIX = "genmetrics.failed."
MAX_SAMPLES_ENV = MAX_SAMPLES_BYTES.name
DEFAULT_MAX_SAMPLES_BYTES = 4 << 30  # 20,000 images of 256x256 (samples alone)
COMPRESSIBLE_BYTES = 256 << 20  # arrays up to this size may compress any amount (e.g. black images)

_STEP_TAG = re.compile(r"^genmetrics\.samples\.(\d+)$")


def samples_artifact_path(step):
    """Artifact path of the samples of ``step`` inside the run."""
    return f"{SAMPLES_DIR}/step_{step:09d}.npz"


def logged_sample_steps(tags):
    """Map step -> artifact path for every samples tag in a run's ``tags`` dict."""
    steps = {}
    for key, value in tags.items():
        match = _STEP_TAG.match(key)
        if match:
            steps[int(match.group(1))] = value
    return dict(sorted(steps.items()))


def pending_sample_steps(tags):
    """Map step -> artifact path for the logged sample steps that have no ``scored`` or ``failed`` tag yet."""
    return {
        step: path
        for step, path in logged_sample_steps(tags).items()
        if SCORED_TAG_PREFIX + str(step) not in tags and FAILED_TAG_PREFIX + str(step) not in tags
    }


class SamplesFileError(ValueError):
    """A samples file that cannot be scored as it is (not an archive of the convention, corrupt, over the size
    limits): reading it again gives the same error, so a scorer records the step as failed."""


def max_samples_bytes():
    """The size limit of a samples file's arrays: ``GENMETRICS_MAX_SAMPLES_BYTES``, else 4 GiB."""
    text = MAX_SAMPLES_BYTES.value()
    if not text:
        return DEFAULT_MAX_SAMPLES_BYTES
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{MAX_SAMPLES_ENV} must be a positive number of bytes, got {text!r}")
    return int(text)


def _over_limit(nbytes, limit, where):
    return (f"{where}: the samples take {nbytes} bytes uncompressed, over the limit of {limit} bytes "
            f"({MAX_SAMPLES_ENV}; default {DEFAULT_MAX_SAMPLES_BYTES})")


def _check_step(step):
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative integer (the training step), got {step!r}")
    return int(step)


def to_uint8_nhwc(images, value_range=None, name="samples"):
    """Quantise images to one uint8 (N, H, W, 3) array, read by the one normaliser
    (:mod:`genmetrics.stats.images.image_input`: layout, ``value_range``, channels); images of different sizes
    give a list of uint8 (H, W, 3) arrays instead.

    uint8 input is kept as is; floats in [0, 1] are mapped to 0..255 with rounding, ``round(255 x)``.
    `images` may be a :class:`~genmetrics.plugin.sample_input.SampleBatches` already decoded (the batches drawn
    for background scoring): its batches are quantised as they are.
    """
    from .sample_input import SampleBatches, as_uint8_nhwc

    try:
        batches = [as_uint8_nhwc(b) for b in SampleBatches.of(images, None, 1 << 30, value_range)]
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    if len({b.shape[1:] for b in batches}) > 1:
        return [image for batch in batches for image in batch]
    return np.ascontiguousarray(np.concatenate(batches))


def image_shapes(images):
    """The (H, W, 3) shape of each image of a uint8 (N, H, W, 3) array or a list of (H, W, 3) arrays."""
    return [tuple(image.shape) for image in images]


def _described(images):
    """Shape of an (N, H, W, 3) array, or the count and sizes of a list of images, for messages."""
    if not isinstance(images, list):
        return str(tuple(images.shape))
    from .grid import describe_sizes

    return f"{len(images)} images of sizes {describe_sizes(image.shape[:2] for image in images)}"


def _stored(name, images):
    """The arrays that store `images` under `name`: one (N, H, W, 3) array, or for a list of images of different
    sizes ``<name>_pixels`` (P, 3) and ``<name>_sizes`` (N, 2) (see the module docstring)."""
    if images is None:
        return {}
    if not isinstance(images, list):
        return {name: images}
    return {f"{name}_pixels": np.concatenate([image.reshape(-1, 3) for image in images]),
            f"{name}_sizes": np.array([image.shape[:2] for image in images], dtype=np.int64).reshape(-1, 2)}


def _stored_prompts(prompts):
    """The arrays that store `prompts` (a list of str, or None): ``prompts_utf8`` and ``prompt_ends``."""
    if prompts is None:
        return {}
    encoded = [prompt.encode("utf-8") for prompt in prompts]
    return {"prompts_utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            "prompt_ends": np.cumsum([len(e) for e in encoded], dtype=np.int64)}


def write_samples_file(path, samples, targets=None, prompts=None):
    """Write the npz archive of the convention above: ``samples`` and optional ``targets``, each a uint8
    (N, H, W, 3) array or a list of uint8 (H, W, 3) arrays of different sizes, and optional `prompts` (N str)."""
    arrays = {**_stored("samples", samples), **_stored("targets", targets), **_stored_prompts(prompts)}
    limit = max_samples_bytes()
    nbytes = sum(a.nbytes for a in arrays.values())
    if nbytes > limit:
        raise ValueError(_over_limit(nbytes, limit, "log_gen_samples") + "; log fewer or smaller samples per step")
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def _declared_arrays(path, where):
    """{name: (shape, dtype, nbytes)} of the file's arrays, from their headers, checked against the limits."""
    import zipfile

    from genmetrics.registry.npz_import import check_npz_members

    limit = max_samples_bytes()
    try:
        declared = check_npz_members(path, max_bytes=None, compressible_bytes=COMPRESSIBLE_BYTES)
    except (ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as error:
        reason = str(error).replace(str(path), where) or type(error).__name__
        raise SamplesFileError(reason if reason.startswith(where) else f"{where}: not a samples archive ({reason})") \
            from None
    nbytes = sum(size for _, _, size in declared.values())
    if nbytes > limit:
        raise SamplesFileError(_over_limit(nbytes, limit, where))
    if "samples" not in declared and "samples_pixels" not in declared:
        raise SamplesFileError(f"{where} is not a genmetrics samples file: it has no 'samples' array")
    for name, (shape, dtype, _) in declared.items():
        if name in ("samples", "targets") and (dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3):
            raise SamplesFileError(f"{where}: '{name}' must be uint8 (N, H, W, 3), got {dtype} {shape}; "
                                   "log samples with log_gen_samples")
        if name.endswith("_pixels") and (dtype != np.uint8 or len(shape) != 2 or shape[-1] != 3):
            raise SamplesFileError(f"{where}: '{name}' must be uint8 (P, 3), got {dtype} {shape}")
        if name.endswith("_sizes") and (dtype != np.int64 or len(shape) != 2 or shape[-1] != 2):
            raise SamplesFileError(f"{where}: '{name}' must be int64 (N, 2), got {dtype} {shape}")
        if name in _PROMPT_ARRAYS and (dtype != _PROMPT_ARRAYS[name] or len(shape) != 1):
            raise SamplesFileError(f"{where}: '{name}' must be {np.dtype(_PROMPT_ARRAYS[name])} (n,), got {dtype} "
                                   f"{shape}")
    for first, second in (("samples_pixels", "samples_sizes"), ("targets_pixels", "targets_sizes"),
                          tuple(_PROMPT_ARRAYS)):
        if (first in declared) != (second in declared):
            raise SamplesFileError(f"{where}: '{first}' and '{second}' come together; the file has one")
    return declared


_PROMPT_ARRAYS = {"prompts_utf8": np.uint8, "prompt_ends": np.int64}  #: the prompts' arrays and their dtypes


def _split_images(archive, name, declared, where):
    """The images stored under `name` (see the module docstring): an (N, H, W, 3) array, a list of (H, W, 3)
    arrays (of different sizes), or None. The sizes are checked against the pixels before the pixels are read."""
    if name in declared:
        return archive[name]
    if f"{name}_sizes" not in declared:
        return None
    sizes = archive[f"{name}_sizes"].tolist()
    pixels = declared[f"{name}_pixels"][0][0]
    if not sizes or min(min(size) for size in sizes) < 1 or sum(h * w for h, w in sizes) != pixels:
        raise SamplesFileError(f"{where}: '{name}_sizes' does not describe the {pixels} pixels of '{name}_pixels' "
                               "(each image at least 1 x 1, the sizes' pixels adding up to them)")
    flat, images, start = archive[f"{name}_pixels"], [], 0
    for h, w in sizes:
        images.append(flat[start:start + h * w].reshape(h, w, 3))
        start += h * w
    return images


def _split_prompts(archive, declared, count, where):
    """The stored prompts (a list of `count` str), or None when the file has none; the offsets are checked
    against the bytes before the bytes are read, and the bytes decoded strictly."""
    if "prompt_ends" not in declared:
        return None
    ends, size = archive["prompt_ends"], declared["prompts_utf8"][0][0]
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    if len(ends) != count or (len(ends) and (ends[-1] != size or (ends < starts).any())):
        raise SamplesFileError(f"{where}: 'prompt_ends' does not describe the {size} bytes of 'prompts_utf8' for "
                               f"{count} samples (one non-decreasing end offset per sample, the last one {size})")
    data = archive["prompts_utf8"].tobytes()
    try:
        return [data[start:end].decode("utf-8") for start, end in zip(starts.tolist(), ends.tolist())]
    except UnicodeDecodeError as error:
        raise SamplesFileError(f"{where}: 'prompts_utf8' is not valid UTF-8 ({error.reason} at byte "
                               f"{error.start})") from None


def read_samples_file(path, where=None):
    """Read an archive written by :func:`write_samples_file`: returns (samples, targets or None), each a uint8
    (N, H, W, 3) array, or a list of uint8 (H, W, 3) arrays when the images differ in size. Stored prompts are
    checked and left out (:func:`read_samples_and_prompts` returns them)."""
    return read_samples_and_prompts(path, where)[:2]


def read_samples_and_prompts(path, where=None):
    """Read an archive written by :func:`write_samples_file`: returns (samples, targets or None, prompts or None);
    images as :func:`read_samples_file` gives them, prompts a list of one str per sample.

    The file is checked from its headers before anything is allocated (size limit, see the module docstring);
    any problem of the file raises :class:`SamplesFileError` (a ValueError) naming `where` (default: `path`).
    """
    import zipfile
    import zlib

    where = where or str(path)
    declared = _declared_arrays(path, where)
    try:
        with np.load(path, allow_pickle=False) as archive:
            samples = _split_images(archive, "samples", declared, where)
            targets = _split_images(archive, "targets", declared, where)
            prompts = _split_prompts(archive, declared, len(samples), where)
    except SamplesFileError:
        raise
    except (ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise SamplesFileError(f"{where}: cannot read the samples ({str(error).splitlines()[0]}); the file is "
                               "corrupt or truncated") from None
    return samples, targets, prompts


def _resolve_run_id(run_id):
    import mlflow

    if run_id is not None:
        return run_id
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: call inside `with mlflow.start_run():` or pass run_id=")
    return run.info.run_id


def log_gen_samples(samples, step: int, run_id: Optional[str] = None, value_range: Optional[Tuple[float, float]] = None,
                    targets=None, client=None, prompts: Optional[Sequence[str]] = None) -> str:
    """Store ``samples`` (and optional paired ``targets`` and ``prompts``) of training ``step`` in an MLflow run.

    ``samples``: any image input of :mod:`genmetrics.stats.images.image_input` (uint8, or floats in [0, 1] or
    in a declared ``value_range`` such as (-1, 1); NCHW/NHWC batches, lists of images, ...).
    The samples are written to a temporary ``.npz``, uploaded as an artifact, and only then the
    step is announced with the tag ``genmetrics.samples.<step>`` (see the module docstring).
    Logging the same step twice replaces its samples (the tag points at the same path).
    Works with the active run or the given ``run_id``; ``client`` defaults to a new
    ``MlflowClient()`` on the current tracking URI. Returns the artifact path.
    ``prompts``: one text per sample, in order (a ValueError naming both counts otherwise), stored beside the
    samples; deferred scoring passes them to ``clip_score``.
    """
    from mlflow.tracking import MlflowClient

    from .prompt_scoring import check_prompt_count, check_prompts

    step = _check_step(step)
    prompts = check_prompts(prompts)
    run_id = _resolve_run_id(run_id)
    client = client or MlflowClient()
    sample_array = to_uint8_nhwc(samples, value_range, name="samples")
    target_array = None
    if targets is not None:
        target_array = to_uint8_nhwc(targets, value_range, name="targets")
        if image_shapes(target_array) != image_shapes(sample_array):
            raise ValueError(f"targets must match samples one to one: samples {_described(sample_array)}, targets "
                             f"{_described(target_array)}")
    if prompts is not None:
        check_prompt_count(len(sample_array), len(prompts))
    artifact_path = samples_artifact_path(step)
    with tempfile.TemporaryDirectory(prefix="genmetrics-samples-") as tmp:
        local = os.path.join(tmp, os.path.basename(artifact_path))
        write_samples_file(local, sample_array, target_array, prompts)
        client.log_artifact(run_id, local, os.path.dirname(artifact_path))
    client.set_tag(run_id, SAMPLES_TAG_PREFIX + str(step), artifact_path)
    return artifact_path
