"""The `genmetrics` console script.

Each sub-command lives in its own module of this package, which exposes
``add_parser(subparsers)``; the parser it adds sets ``func`` to the function
that runs the command and returns its exit status.
"""
import argparse
import importlib
import sys

__all__ = ["build_parser", "main", "COMMAND_MODULES"]

COMMAND_MODULES = ["cli_runs", "cli_deferred", "cli_demo", "cli_fid", "cli_stats"]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="genmetrics",
        description="IS / FID / KID / SSIM / MS-SSIM / LPIPS for image generators, logged to MLflow.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").add_parser(subparsers)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as exc:
        print(f"genmetrics {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
