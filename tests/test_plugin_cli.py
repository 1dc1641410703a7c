"""The console script answers --help without torch or MLflow, refuses bad arguments and paths before any model
loads, and shows warnings and errors as one line each (issue 12 items 2-3). Real subprocesses, real folders."""
import json
import logging
import subprocess
import sys
import warnings

import pytest

from genmetrics.plugin.cli import COMMAND_MODULES, build_parser, main, one_line_messages
from genmetrics.stats.messages import GenMetricsWarning

HEAVY = ("torch", "mlflow", "genmetrics.stats.networks.inception", "genmetrics.registry")

RUN_MAIN = """
import json, sys
from genmetrics.plugin.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
print(json.dumps({"status": status, "loaded": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _run_main(*argv):
    """(exit status, heavy modules loaded, stderr) of ``main(argv)`` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", RUN_MAIN, *argv], capture_output=True, text=True, timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["status"], result["loaded"], done.stderr


def _commands():
    """Every sub-command path, e.g. ["fid"], ["stats", "build"]."""
    commands = []
    for name, parser in _subparsers(build_parser()).items():
        nested = _subparsers(parser)
        commands += [[name, sub] for sub in nested] if nested else [[name]]
    return commands


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return dict(action.choices)
    return {}


def test_every_command_is_listed():
    assert len(COMMAND_MODULES) == 5 and ["stats", "build"] in _commands() and ["demo"] in _commands()


@pytest.mark.parametrize("command", [[]] + _commands(), ids=lambda c: " ".join(c) or "genmetrics")
def test_help_imports_neither_torch_nor_mlflow(command):
    status, loaded, _ = _run_main(*command, "--help")
    assert status == 0 and loaded == [], loaded


@pytest.mark.parametrize("argv, message", [
    (["stats", "build", "{empty}", "-o", "{missing}/x.h5"], "the folder {missing} does not exist"),
    (["stats", "build", "{empty}", "-o", "{empty}"], "is a folder; name the file to write"),
    (["stats", "build", "{empty}", "-o", "{tmp}/x.h5"], "no images in '{empty}'"),
    (["stats", "build", "{missing}", "-o", "{tmp}/x.h5"], "SOURCE {missing} is no existing folder or zip"),
    (["stats", "build", "cifar10", "--root", "{missing}", "-o", "{tmp}/x.h5"], "--root {missing} does not exist"),
    (["stats", "merge", "{tmp}/a.h5", "-o", "{tmp}/m.h5"], "shard file {tmp}/a.h5 does not exist"),
    (["stats", "import", "{tmp}/s.npz", "--mode", "clean"], ".npz file {tmp}/s.npz does not exist"),
    (["fid", "{empty}", "{empty}"], "no images in '{empty}'"),
    (["demo", "--steps", "1", "--out", "{tmp}/demo"], "the demo needs at least 2 steps"),
    (["demo", "--out", "{tmp}/file/demo"], "{tmp}/file is a file, not a folder"),
    (["score", "abc", "--reference", "x", "--metrics", "fid,foo"], "unknown metric(s) foo"),
])
def test_bad_paths_and_arguments_are_refused_before_any_model_loads(tmp_path, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file").write_text("not a folder")
    names = {"empty": str(empty), "missing": str(tmp_path / "missing"), "tmp": str(tmp_path)}
    status, loaded, stderr = _run_main(*[a.format(**names) for a in argv])
    assert status == 2 and loaded == [], (loaded, stderr)
    assert stderr.count("\n") == 1 and stderr.startswith(f"genmetrics {argv[0]}")
    assert message.format(**names) in stderr, stderr


def test_bad_numbers_are_refused_by_the_parser(capsys):
    for argv in (["stats", "build", "x", "-o", "y.h5", "--batch-size", "0"], ["fid", "a", "b", "--kid-subsets", "-1"],
                 ["watch", "--experiment", "e", "--reference", "r", "--interval", "nan"]):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2
    assert "--batch-size: must be a positive integer, got 0" in capsys.readouterr().err


def test_warnings_and_logged_warnings_are_one_line_each(capsys):
    logger = logging.getLogger("genmetrics")
    showwarning, propagate = warnings.showwarning, logger.propagate
    with one_line_messages("stats build"):
        warnings.warn("a library warning", GenMetricsWarning)
        logger.warning("genmetrics: skipping is: no classifier head")
        logger.info("not shown")
    assert capsys.readouterr().err.splitlines() == ["genmetrics stats build: warning: a library warning",
                                                    "genmetrics stats build: warning: skipping is: no classifier head"]
    assert (warnings.showwarning, logger.propagate) == (showwarning, propagate)  # restored for the caller's process


def test_listing_says_what_unpinned_means_and_how_to_pin(capsys, tmp_path, monkeypatch):
    """Upstream statistics have no published hash: `stats list` and `stats info` say what that means (trust on
    first use) and how to pin, instead of a bare ``sha256: None``."""
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    assert main(["stats", "list"]) == 0
    listing = capsys.readouterr().out
    assert " unpinned" in listing and "trust on first use" in listing and "GENMETRICS_MANIFEST" in listing
    assert main(["stats", "info", "cifar10-train-32"]) == 0
    info = capsys.readouterr().out
    assert "sha256: unpinned; not fetched yet: the first fetch records its hash (trust on first use)" in info
    assert "sha256: None" not in info and "`sha256: <hex>`" in info


def test_mlflow_errors_are_one_line_without_the_uri_credentials(capsys, monkeypatch):
    """A tracking server that refuses (an MlflowException, not one of our errors) ends the command with one line,
    and the user:password of a tracking URI quoted in MLflow's message is not printed."""
    from mlflow.exceptions import MlflowException

    from genmetrics.plugin import cli_runs

    def refused(args):
        raise MlflowException("API request to http://user:secret@127.0.0.1:9/api/2.0/mlflow/runs/get failed")

    monkeypatch.setattr(cli_runs, "run_replay", refused)
    assert main(["replay"]) == 2
    err = capsys.readouterr().err
    assert err == "genmetrics replay: error: API request to http://127.0.0.1:9/api/2.0/mlflow/runs/get failed\n"
