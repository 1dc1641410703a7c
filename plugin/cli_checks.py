"""Checks of command-line arguments that run right after parsing, before torch, MLflow or any model loads.

Argument types (``positive_int`` ...) make argparse refuse a bad number with its usual one-line usage
error; the path checks (``output_file``, ``existing_file``, ``existing_path``) raise ``ValueError`` naming
the path and, for outputs, the folder, which ``genmetrics.plugin.cli.main`` prints as one line. Only
``os`` is imported here, so a wrong path is refused in a fraction of a second.
"""
import argparse
import os

__all__ = ["positive_int", "non_negative_float", "output_file", "output_folder", "existing_file", "existing_path"]


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_float(text):
    """argparse type: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def output_file(path, option="-o/--output"):
    """`path` as an output file: its folder exists and is writable, and `path` is not a folder."""
    path = os.path.expanduser(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a folder; name the file to write, e.g. {os.path.join(path, 'stats.h5')}")
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: the folder {folder} does not exist; create it first "
                         f"(mkdir -p {folder}) or write elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: the folder {folder} is not writable; choose another output location")
    return path


def output_folder(path, option="--out"):
    """`path` as an output folder (created later if missing): not a file, and its nearest existing
    ancestor is a writable folder."""
    path = os.path.abspath(os.path.expanduser(path))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{option} {path}: {existing} is a file, not a folder; choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: the folder {existing} is not writable; choose another folder")
    return path


def existing_file(path, what="input file"):
    """`path` names an existing regular file."""
    if not os.path.exists(path):
        raise ValueError(f"{what} {path} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path} is not a regular file")
    return path


def existing_path(path, what="input"):
    """`path` exists (file or folder)."""
    if not os.path.exists(path):
        raise ValueError(f"{what} {path} does not exist")
    return path
