"""MkDocs hook: give griffe (mkdocstrings' Python loader) a `genmetrics/` folder to read.

`genmetrics` has no folder on disk: setup.cfg maps `genmetrics.stats -> stats/`, `genmetrics.registry ->
registry/`, `genmetrics.plugin -> plugin/` (`package_dir`), and an editable install resolves those names
through an import hook that griffe's static finder cannot see (it looks for a directory named after the
package). Before each build (also every rebuild of `mkdocs serve`) this hook reads `package_dir` from
setup.cfg, the one place that states the mapping, and makes `build/api-src/genmetrics/<part>` point at
each source folder (a symlink; a copy where symlinks are not available). mkdocs.yml lists
`build/api-src` in the python handler's `paths`, so the API reference is read statically from this
checkout's sources: nothing is imported (no torch, no mlflow) and no install is needed beyond the docs
extra.
"""
from __future__ import annotations

import configparser
import os
import shutil
from pathlib import Path

from mkdocs.plugins import event_priority

PACKAGE = "genmetrics"
API_SRC = Path("build") / "api-src"


def _package_dir(root: Path) -> dict[str, Path]:
    parser = configparser.ConfigParser()
    parser.read(root / "setup.cfg", encoding="utf-8")
    mapping = {}
    for line in parser.get("options", "package_dir", fallback="").splitlines():
        name, sep, folder = line.partition("=")
        name = name.strip()
        if sep and name.startswith(PACKAGE + "."):
            mapping[name[len(PACKAGE) + 1:]] = root / folder.strip()
    if not mapping:
        raise RuntimeError(f"no '{PACKAGE}.*' entries in [options] package_dir of {root / 'setup.cfg'}")
    return mapping


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    try:
        os.symlink(target, tmp, target_is_directory=True)
        os.replace(tmp, link)  # atomic, so concurrent builds never see a missing folder
    except (OSError, NotImplementedError):
        if tmp.is_symlink():
            tmp.unlink()
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)
        shutil.copytree(target, link, ignore=shutil.ignore_patterns("__pycache__"))


# Before mkdocstrings' own on_config: its python handler expands `paths` when it is created and drops
# folders that do not exist yet (a fresh clone).
@event_priority(100)
def on_config(config):
    root = Path(config.config_file_path).resolve().parent
    package = root / API_SRC / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    for part, folder in _package_dir(root).items():
        _link(folder, package / part)
    return config
