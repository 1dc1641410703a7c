"""`genmetrics fid REF SAMPLES --suite adm`: the five numbers of OpenAI's guided-diffusion evaluator.

ImageNet papers (ADM, DiT, EDM2, VAR, ...) print Inception Score, FID, sFID, precision and recall as
``evaluations/evaluator.py REF.npz SAMPLES.npz`` computes them. This command computes the same five from the
same files, in PyTorch, and prints them in the evaluator's format and order::

    Inception Score: 215.8370361328125
    FID: 3.9425574129223264
    sFID: 6.140433703346162
    Precision: 0.8265
    Recall: 0.5309

REF: an evaluator reference batch (``VIRTUAL_imagenet256_labeled.npz``: its images' pool3 features are computed,
its stored pool3 and spatial moments are used), an ``.h5`` that holds spatial moments and features (``genmetrics
stats import`` of such a batch), or a registry ref (``adm_imagenet-train-256``). SAMPLES: an ``.npz`` of uint8
(N, H, W, 3) images (``arr_0``), read batch by batch, or an image folder / zip. Everything runs in the evaluator's
preprocessing (``legacy_tensorflow``). The metrics are the table's (``is`` with ``is_split_size`` 5000, ``fid``,
``sfid``, ``precision`` and ``recall`` with k = 3): see docs/imagenet.md. Without the Inception's classifier head
(offline, no weights file with it) the ``Inception Score:`` line says why and the other four still print.
"""
import sys

from genmetrics.stats.defaults import SPATIAL_LAYER

__all__ = ["ADM_METRICS", "ADM_SETTINGS", "ADM_LINES", "run_adm_suite"]

#: The evaluator's metrics, as names of the metric table, and its settings.
ADM_METRICS = ("is", "fid", "sfid", "precision", "recall")
ADM_SETTINGS = {"is_split_size": 5000, "precision_k": 3, "recall_k": 3}
#: (label, key) of the evaluator's output lines, in its order.
ADM_LINES = (("Inception Score", "is"), ("FID", "fid"), ("sFID", "sfid"), ("Precision", "precision"),
             ("Recall", "recall"))


def _reference(source, args):
    """The reference side: pool3 moments and features, and the spatial layer. An evaluator reference batch has its
    images' features computed with the same Inception weights (``--weights``) as the samples'."""
    from genmetrics.registry import load
    from genmetrics.registry.adm_import import is_adm_reference_batch, read_adm_batch

    if is_adm_reference_batch(source):
        print(f"computing reference batch activations of {source}...", file=sys.stderr)
        ref = read_adm_batch(source, weights=args.weights, device=args.device, batch_size=args.batch_size,
                             progress=False)
    else:
        ref = load(source)
    ref.layer(SPATIAL_LAYER)  # a clear error when the file holds no spatial moments
    if not ref.has_features:
        raise ValueError(f"{source} holds no features: precision and recall need the reference batch's images' "
                         f"features (import the evaluator's reference batch with `genmetrics stats import`)")
    return ref


def _inception(weights, device):
    """(model, why): the FID Inception with its classifier head when available (for IS), else without it and the
    reason as one line."""
    from genmetrics.stats import load_inception

    try:
        return load_inception(weights, device=device, require_logits=True, progress=False), None
    except (OSError, ValueError, RuntimeError) as error:
        why = getattr(error, "short", None) or str(error).splitlines()[0]
        return load_inception(weights, device=device, progress=False), why


def _samples(source, model, args):
    """The sample side: pool3 moments, features and logits, and the spatial moments, in one pass."""
    from genmetrics.registry.adm_import import ADM_MODE
    from genmetrics.stats import FeatureAccumulator

    accumulator = FeatureAccumulator(model, mode=ADM_MODE, keep_features=True, keep_logits=True,
                                     batch_size=args.batch_size, extra_layers=(SPATIAL_LAYER,),
                                     precision=args.precision)
    accumulator.update(source)
    return accumulator.compute()


def run_adm_suite(args):
    """Print the evaluator's five lines for reference `args.a` and samples `args.b`; returns the exit status."""
    from genmetrics.stats.metric_table import compare

    ref = _reference(args.a, args)
    model, no_is = _inception(args.weights, args.device)
    print(f"computing sample batch activations of {args.b}...", file=sys.stderr)
    samples = _samples(args.b, model, args)
    ref.check_comparable(samples.provenance, args.allow_mismatch, names=("samples", args.a))
    names = [name for name in ADM_METRICS if not (name == "is" and no_is)]
    values = compare(samples, ref, names, ADM_SETTINGS).values
    for label, key in ADM_LINES:
        print(f"{label}: {values[key]}" if key in values else f"{label}: not computed ({no_is})")
    return 0
