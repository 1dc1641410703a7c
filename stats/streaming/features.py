"""Inception features of any accepted image input: resize (per mode), run the network, collect on the CPU.

Images are preprocessed one input batch at a time and regrouped into network batches of exactly
`batch_size` images (the last one smaller), so the features do not depend on how the input was batched;
with the full-float32 network they also do not depend on `batch_size` beyond float rounding (~1e-6).

For folders, zip files, arrays, tensors and lists of them, reading, decoding and resizing run in a
background thread, up to ``PREFETCH`` network batches ahead of the network, so neither waits for the
other (the network's threads and PIL release the GIL). Other iterables (generators, DataLoaders) are
consumed in the caller's thread: their code may rely on its grad mode, CUDA device or stream.
An :class:`~genmetrics.stats.networks.inception.FIDInception` is run through its fast form
(:func:`genmetrics.stats.networks.inception_fast.fast_inception`, same features to ~1e-6) unless ``fast=False``;
``precision="bf16"`` runs that fast form in bfloat16 (opt-in, not exact; see the ``inception_fast`` docstring).

Mode, precision and layers are validated by the model's extractor spec
(:func:`genmetrics.stats.networks.extractor.check_extraction`); a layer the spec computes only on request
(the FID Inception's ``spatial``) is computed only when `layers` names it.
"""
import os
import queue
import threading
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODE, DEFAULT_PRECISION, FEATURE_LAYER, LOGITS_LAYER
from ..images.image_input import count_images, iter_image_batches
from ..images.preprocess import preprocess
from ..networks.extractor import FeatureExtractor, check_extraction, spec_of
from ..networks.inception import FIDInception, load_inception
from ..networks.inception_fast import fast_inception

#: Network batches prepared ahead of the network by the background thread.
PREFETCH = 2

__all__ = ["extract_features"]


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _model_device(model, device):
    """The device the model's parameters live on; an explicit `device` must be the same one."""
    param = next(model.parameters(), None)
    model_device = param.device if param is not None else torch.device(device or "cpu")
    if device is not None and not _same_device(torch.device(device), model_device):
        raise ValueError(f"the model is on {model_device} but device={device!r}; move it with "
                         f"model.to({str(device)!r}) or leave device=None to use the model's device")
    return model_device


def _same_device(a, b):
    if a.type != b.type:
        return False
    if a.type == "cuda":
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return True


def _network_input(images, prepare, batch_size, value_range) -> Iterator[torch.Tensor]:
    """Network batches of exactly `batch_size` images (the last one smaller), in input order; `prepare` maps a
    normalised batch to the network's input on its device. Images of different sizes are prepared apart (to the
    same input size) and batched together; images from files are prepared one by one as they are decoded, so
    memory holds prepared batches and at most a few decoded images (see ``image_files.iter_image_files``)."""
    pending, pending_count = [], 0
    for prepared in iter_image_batches(images, value_range, transform=prepare, batch_size=batch_size):
        pending.append(prepared)
        pending_count += prepared.shape[0]
        while pending_count >= batch_size:
            merged = torch.cat(pending) if len(pending) > 1 else pending[0]
            yield merged[:batch_size]
            pending = [merged[batch_size:]] if merged.shape[0] > batch_size else []
            pending_count -= batch_size
    if pending_count:
        yield torch.cat(pending)


_DONE = object()


def _prefetched(items: Iterator, depth: int = PREFETCH) -> Iterator:
    """The items of `items`, produced by a daemon thread up to `depth` ahead of the consumer.

    An exception in the producer is re-raised in the consumer at the point it happened; when the
    consumer stops early (exception, ``close()``), the producer stops at its next item.
    """
    slots, stop = queue.Queue(maxsize=depth), threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            with torch.no_grad():
                for item in items:
                    if not put((item, None)):
                        return
            put((_DONE, None))
        except BaseException as error:  # handed to the consumer, raised there
            put((_DONE, error))

    worker = threading.Thread(target=produce, name="genmetrics-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def _prefetchable(images) -> bool:
    """True for inputs whose reading has no side effects in the caller's thread: a folder or zip path,
    an array or tensor, or a list/tuple of those."""
    def array(x):
        return isinstance(x, np.ndarray) or torch.is_tensor(x)
    return (isinstance(images, (str, os.PathLike)) or array(images)
            or (isinstance(images, (list, tuple)) and all(array(x) for x in images)))


def _network(model, fast, precision):
    """The module that computes `model`'s features: the fast form of a plain FIDInception when `fast`, in
    `precision` (a name its spec accepts); reduced precision exists only for that fast form. A FeatureExtractor
    runs its network."""
    fast_form = fast and type(model) is FIDInception
    if precision != DEFAULT_PRECISION and not fast_form:
        raise ValueError(f"precision={precision!r} needs the fast FID Inception (the default model with fast=True); "
                         f"other models run as they are: use precision={DEFAULT_PRECISION!r}")
    if fast_form:
        return fast_inception(model, precision)
    return model.network if isinstance(model, FeatureExtractor) else model


def _preparation(model, mode, device):
    """normalised batch -> network input on `device`: the extractor's own preprocessing for a FeatureExtractor
    (its mode), else :func:`~genmetrics.stats.images.preprocess.preprocess` in `mode`."""
    if isinstance(model, FeatureExtractor):
        return model.prepare
    return lambda batch: preprocess(batch, mode, device=device)


def _on_request(model, layers) -> Dict[str, bool]:
    """Keyword arguments asking `model`'s network for the requested layers that its spec computes only on
    request (``{"spatial": True}``); empty for the default outputs, so the network runs exactly as by default."""
    spec = spec_of(model)
    if layers is None or spec is None:
        return {}
    return {layer: True for layer in layers if layer in spec.on_request}


def _features(network, x, asked, layers):
    """Run the network on one network batch (with the keyword arguments `asked`); dict of float32 CPU tensors
    (a bare tensor counts as pool3), exactly the `layers` when given (one it did not return is refused)."""
    out = network(x, **asked)
    if torch.is_tensor(out):
        out = {FEATURE_LAYER: out.flatten(1)}
    if layers is not None:
        missing = [layer for layer in layers if layer not in out]
        if missing:
            head = (f"; {LOGITS_LAYER!r} needs Inception weights with the 1008-way classifier head "
                    f"(load_inception(require_logits=True))" if LOGITS_LAYER in missing else "")
            raise ValueError(f"the model returned layers {', '.join(out)}, not {', '.join(map(repr, missing))}{head}")
        out = {layer: out[layer] for layer in layers}
    return {name: value.detach().to("cpu", torch.float32) for name, value in out.items()}


def extract_features(images, model: Optional[torch.nn.Module] = None, mode: str = DEFAULT_MODE,
                     batch_size: int = DEFAULT_BATCH_SIZE, device=None, progress: bool = True,
                     value_range: Optional[Tuple[float, float]] = None, fast: bool = True,
                     precision: str = DEFAULT_PRECISION,
                     layers: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    """Inception features of `images` -> {"pool3": (N, 2048), "logits": (N, 1008) if the model has the head}.

    images: uint8 (0..255) or float [0, 1] arrays/tensors in NCHW or NHWC, iterables of batches or
      single images, PIL images, or a folder / zip path (see ``genmetrics.stats.images.image_input``).
    value_range: the range of float images when not [0, 1], e.g. (-1, 1).
    model: a module taking float (N, 3, 299, 299) in [-1, 1] and returning a dict of features (or a
      tensor, taken as pool3); default ``load_inception(device=device)`` (default weight resolution);
      or a :class:`~genmetrics.stats.networks.extractor.FeatureExtractor` (``load_extractor("dinov2-vit-l-14")``),
      which preprocesses in its own mode (`mode` is then not used) and returns its layers.
      It is run in eval mode (its training flag is restored afterwards).
    mode: "clean" (clean-fid), "legacy_tensorflow" (TTUR / torch-fidelity) or "legacy_pytorch"
      (pytorch-fid); see ``genmetrics.stats.images.preprocess``.
    device: None = the model's device (CUDA if available for the default model).
    progress: show a tqdm progress bar (images processed) on stderr.
    fast: run an FIDInception through its fast form (BatchNorm folded, fused convolutions, channels-last;
      float32 like the module, features equal to ~1e-6 relative); False runs the module as it is. A
      FeatureExtractor runs its network as loaded (``load_extractor(..., fast=False)`` keeps the module).
    precision: "fp32" (exact, default) or "bf16": the fast Inception in bfloat16, faster on an
      AVX-512-BF16 CPU, pool3 features and FID a little off (docs/performance.md; opt-in, reference
      statistics are always built in fp32).
    layers: None (the model's default outputs, above) or the layers to return, exactly those, e.g.
      ``["pool3", "spatial"]`` -> {"pool3": (N, 2048), "spatial": (N, 2023)}: the FID Inception provides
      ``pool3``, ``logits`` and ``spatial`` (sFID's features, computed only when named here; see
      :mod:`genmetrics.stats.networks.inception`), a FeatureExtractor its spec's layers; an unknown name is
      refused with the valid ones.
    Returns float32 CPU tensors, rows in input order.

    Raises:
        ValueError: an unknown mode, precision or layer (the spec's message lists the valid ones), a bad
            `batch_size`, a device that is not the model's, or images the normaliser refuses.
    """
    mode, precision, layers = check_extraction(model, mode, precision, layers)
    _check_batch_size(batch_size)
    if model is None:
        model = load_inception(device=device)
    device = _model_device(model, device)
    network, asked, collected = _network(model, fast, precision), _on_request(model, layers), {}
    was_training = model.training
    model.eval()
    batches = _network_input(images, _preparation(model, mode, device), batch_size, value_range)
    batches = _prefetched(batches) if _prefetchable(images) else batches
    try:
        with torch.no_grad(), tqdm(total=count_images(images), disable=not progress, unit="img",
                                   desc=f"{model.name} features ({model.mode})" if isinstance(model, FeatureExtractor)
                                   else f"Inception features ({mode})", leave=False) as bar:
            for x in batches:
                for name, value in _features(network, x, asked, layers).items():
                    collected.setdefault(name, []).append(value)
                bar.update(x.shape[0])
    finally:
        batches.close()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in collected.items()}
