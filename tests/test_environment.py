"""Every GENMETRICS_* variable is declared once (genmetrics.stats.environment), read through that declaration
and shown by the docs table; the cache and the spool follow XDG on Linux unless GENMETRICS_HOME is set."""
import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from genmetrics.stats import environment
from genmetrics.stats.environment import VARIABLES, markdown_table, variable, weights_variable

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("stats", "registry", "plugin")
DECLARED = {v.name for v in VARIABLES}


def _package_files(*suffixes):
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*") if p.suffix in suffixes)


def test_every_genmetrics_name_in_the_code_is_declared():
    """Any GENMETRICS_ name the code mentions (a read, a message, a docstring) is a declared variable; a name
    ending in ``_`` is a prefix in prose (``GENMETRICS_DOWNLOAD_*``) and is skipped."""
    undeclared = {}
    for path in _package_files(".py", ".yaml", ".cfg"):
        for name in re.findall(r"GENMETRICS_[A-Z0-9_]+", path.read_text(encoding="utf-8")):
            if not name.endswith("_") and name not in DECLARED:
                undeclared.setdefault(name, path.relative_to(ROOT).as_posix())
    assert not undeclared, f"declare these in genmetrics.stats.environment.VARIABLES: {undeclared}"


def _environ_reads(tree):
    """(line, key node) of every ``os.environ[...]``, ``os.environ.get/pop/setdefault(...)`` and
    ``os.getenv(...)`` in a module's syntax tree."""
    def is_environ(node):
        return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
                and node.value.id == "os")

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and is_environ(node.value):
            yield node.lineno, node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            func = node.func
            if (func.attr in ("get", "pop", "setdefault") and is_environ(func.value)) or (
                    func.attr == "getenv" and isinstance(func.value, ast.Name) and func.value.id == "os"):
                yield node.lineno, node.args[0]


def test_modules_read_genmetrics_variables_only_through_the_declarations():
    """Outside genmetrics.stats.environment, the code reads only other programs' variables (WORLD_SIZE, RANK,
    ...) from os.environ, each by a literal name: a GENMETRICS_ variable goes through `Variable.value`."""
    offenders = []
    for path in _package_files(".py"):
        if path == ROOT / "stats" / "environment.py":
            continue
        for line, key in _environ_reads(ast.parse(path.read_text(encoding="utf-8"))):
            literal = isinstance(key, ast.Constant) and isinstance(key.value, str)
            if not literal or key.value.startswith("GENMETRICS_"):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, f"read these through genmetrics.stats.environment: {offenders}"


def test_every_extractor_weights_variable_is_declared():
    from genmetrics.stats.defaults import EXTRACTOR_NAMES
    from genmetrics.stats.networks.extractor import EXTRACTORS

    assert {spec.weights_env for spec in EXTRACTORS.values()} <= DECLARED
    assert {weights_variable(name).name for name in EXTRACTOR_NAMES} == {s.weights_env for s in EXTRACTORS.values()}
    assert weights_variable("dinov2-vit-l-14").name == "GENMETRICS_DINOV2_VIT_L_14_WEIGHTS"


def test_an_undeclared_name_is_refused_with_the_fix():
    with pytest.raises(KeyError, match="GENMETRICS_NOPE is not a declared .* declare it in"):
        variable("GENMETRICS_NOPE")


def test_the_docs_table_is_the_generated_one():
    page = (ROOT / "docs" / "environment.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- environment table: begin [^\n]*-->\n(.*)<!-- environment table: end -->", page, re.S)
    assert found, "docs/environment.md lost its table markers"
    assert found.group(1) == markdown_table(), (
        "docs/environment.md's table differs from the code: paste `python -m genmetrics.stats.environment` "
        "between the markers")
    assert len(found.group(1).splitlines()) == 2 + len(VARIABLES) == 2 + len(DECLARED)


def _number(variable):
    return float(variable.default.split()[0])


def test_documented_defaults_are_the_code_defaults():
    from genmetrics.plugin.samples import DEFAULT_MAX_SAMPLES_BYTES
    from genmetrics.plugin.spool import RetryPolicy
    from genmetrics.stats.download import Limits

    limits, policy = Limits(), RetryPolicy()
    assert _number(environment.DOWNLOAD_DEADLINE) == limits.deadline
    assert _number(environment.DOWNLOAD_MIN_RATE) == limits.min_rate
    assert _number(environment.DOWNLOAD_RATE_WINDOW) == limits.rate_window
    assert _number(environment.DOWNLOAD_MAX_BYTES) == limits.max_bytes
    assert _number(environment.MAX_SAMPLES_BYTES) == DEFAULT_MAX_SAMPLES_BYTES
    assert _number(environment.LOG_TRIES) == policy.tries
    assert _number(environment.LOG_BACKOFF) == policy.backoff
    assert _number(environment.LOG_TIMEOUT) == policy.timeout
    assert _number(environment.REPLAY_INTERVAL) == policy.replay_interval


def test_settings_are_read_through_the_declarations(monkeypatch):
    """A set variable changes what its reader returns; blanks around it are ignored."""
    from genmetrics.plugin.spool import RetryPolicy
    from genmetrics.stats.download import Limits

    monkeypatch.setenv("GENMETRICS_LOG_TRIES", " 7 ")
    monkeypatch.setenv("GENMETRICS_DOWNLOAD_DEADLINE", "12.5")
    assert RetryPolicy.from_env().tries == 7
    assert Limits.from_env().deadline == 12.5
    monkeypatch.setenv("GENMETRICS_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(ValueError, match="GENMETRICS_DOWNLOAD_DEADLINE='soon' is not a number; fix or unset it"):
        Limits.from_env()


_PROBE = """
import json
from genmetrics.plugin.spool import spool_dir, spool_root
from genmetrics.registry.fetch import stats_dir
from genmetrics.stats.download import genmetrics_home
from genmetrics.stats.networks.weights import weights_dir
print(json.dumps({"cache": genmetrics_home(), "weights": weights_dir(), "stats": stats_dir(),
                  "spool": spool_root(), "spool_dir": spool_dir("http://tracking:5000")}))
"""


def _folders(tmp_path, **variables):
    """The folders a fresh interpreter resolves with HOME = tmp_path/home and only `variables` besides PATH."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path / "home"), **variables}
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return {key: pathlib.Path(value) for key, value in json.loads(done.stdout).items()}


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG folders are Linux's convention")


@linux_only
def test_xdg_folders_are_used_when_genmetrics_home_is_unset(tmp_path):
    folders = _folders(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xcache"), XDG_DATA_HOME=str(tmp_path / "xdata"))
    assert folders["cache"] == tmp_path / "xcache" / "genmetrics"
    assert folders["weights"] == tmp_path / "xcache" / "genmetrics" / "weights"
    assert folders["stats"] == tmp_path / "xcache" / "genmetrics" / "stats"
    assert folders["spool"] == tmp_path / "xdata" / "genmetrics" / "spool"
    assert folders["spool_dir"].parent == folders["spool"]


@linux_only
def test_xdg_defaults_keep_the_old_cache_folder(tmp_path):
    """Without XDG variables the cache is ~/.cache/genmetrics, where earlier versions put it; the spool is in
    ~/.local/share/genmetrics/spool."""
    home = tmp_path / "home"
    folders = _folders(tmp_path)
    assert folders["cache"] == home / ".cache" / "genmetrics"
    assert folders["weights"] == home / ".cache" / "genmetrics" / "weights"
    assert folders["spool"] == home / ".local" / "share" / "genmetrics" / "spool"


@linux_only
def test_a_spool_left_by_an_earlier_version_keeps_being_used(tmp_path):
    legacy = tmp_path / "home" / ".cache" / "genmetrics" / "spool"
    legacy.mkdir(parents=True)
    folders = _folders(tmp_path, XDG_DATA_HOME=str(tmp_path / "xdata"))
    assert folders["spool"] == legacy


def test_genmetrics_home_wins_with_the_old_layout(tmp_path):
    """With GENMETRICS_HOME set everything is under it, as before: weights/, stats/, spool/ (XDG ignored)."""
    home = tmp_path / "gm"
    (tmp_path / "home" / ".cache" / "genmetrics" / "spool").mkdir(parents=True)
    folders = _folders(tmp_path, GENMETRICS_HOME=str(home), XDG_CACHE_HOME=str(tmp_path / "xcache"),
                       XDG_DATA_HOME=str(tmp_path / "xdata"))
    assert folders["cache"] == home
    assert folders["weights"] == home / "weights"
    assert folders["stats"] == home / "stats"
    assert folders["spool"] == home / "spool"
    assert folders["spool_dir"].parent == home / "spool"
