"""The `genmetrics` console script.

Each sub-command lives in its own module of this package, which exposes
``add_parser(subparsers)``; the parser it adds sets ``func`` to the function
that runs the command and returns its exit status.

Nothing here, nor in the ``add_parser`` functions, imports torch or MLflow: ``--help`` answers at once,
and arguments, paths and output locations (``cli_checks``) are refused before any model is loaded.

Messages: an error is one line, ``genmetrics <command>: error: <message>`` (exit status 2); a warning,
whether raised with :mod:`warnings` (category :class:`genmetrics.stats.messages.GenMetricsWarning` in the
library) or logged to the ``genmetrics`` logger, is one line, ``genmetrics <command>: warning: <message>``,
without the source line Python would show.
"""
import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings

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


class _OneLine(logging.Formatter):
    """``genmetrics <command>: warning: <message>`` for records of the ``genmetrics`` logger."""

    def __init__(self, command):
        super().__init__()
        self.command = command

    def format(self, record):
        message = record.getMessage()
        message = message[len("genmetrics: "):] if message.startswith("genmetrics: ") else message
        return f"genmetrics {self.command}: {record.levelname.lower()}: {message}"


def launcher_rank():
    """This process's rank as ``torchrun`` (or another launcher setting ``RANK``) numbers it; 0 without one."""
    rank = os.environ.get("RANK", "0").strip()
    return int(rank) if rank.isdigit() else 0


@contextlib.contextmanager
def one_line_messages(command):
    """Within the block, every warning, and the ``genmetrics`` logger's warnings, show as one line prefixed with
    the command (restored after: ``main`` may be called in a process that has its own logging). Under a launcher
    such as ``torchrun`` only rank 0 shows warnings (every rank would repeat them); errors show on every rank."""
    quiet = launcher_rank() > 0

    def show(message, category, filename, lineno, file=None, line=None):
        if not quiet:
            print(f"genmetrics {command}: warning: {message}", file=sys.stderr)

    logger = logging.getLogger("genmetrics")
    saved = warnings.showwarning, logger.propagate
    _HANDLER.setLevel(logging.ERROR if quiet else logging.WARNING)
    _HANDLER.setFormatter(_OneLine(command))
    warnings.showwarning = show
    logger.addHandler(_HANDLER)
    logger.propagate = False  # one line, not one more from a root handler (score/watch format it with a time)
    try:
        yield
    finally:
        warnings.showwarning, logger.propagate = saved
        logger.removeHandler(_HANDLER)


class _Stderr(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is when a record comes (pytest's capture replaces it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


_HANDLER = _Stderr()


def main(argv=None):
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "stats_command", None))))
    with one_line_messages(command):
        try:
            return args.func(args) or 0
        except Exception as exc:  # noqa: BLE001 - ours and MLflow's errors become one line, others a traceback
            if not isinstance(exc, (ValueError, OSError, KeyError, RuntimeError)) and not _from_mlflow(exc):
                raise
            from .spool import redact_text

            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"genmetrics {command}: error: {redact_text(message)}", file=sys.stderr)
            return 2


def _from_mlflow(exc):
    """An MLflow error (a tracking server that refuses or is down): told in one line, without credentials."""
    return type(exc).__module__.split(".")[0] == "mlflow"


if __name__ == "__main__":
    sys.exit(main())
