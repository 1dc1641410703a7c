"""Benchmark: how fast the ``genmetrics`` console script answers ``--help`` and refuses a bad argument.

    python scripts/bench_cli.py [--repeats 5]

For ``genmetrics --help``, every sub-command's ``--help`` and a few bad invocations (an output in a
folder that does not exist, an empty image folder), runs the installed console script (``genmetrics`` on
PATH, else ``python -m genmetrics.plugin.cli``) `repeats` times in fresh processes and prints the first
(coldest) and the median wall time. Nothing here loads torch or MLflow: the help path and the checks of
paths and arguments import neither (tests/test_plugin_cli.py checks ``sys.modules``).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def _commands():
    from genmetrics.plugin.cli import build_parser

    def subparsers(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    commands = [[]]
    for name, parser in subparsers(build_parser()).items():
        nested = subparsers(parser)
        commands += [[name, sub] for sub in nested] if nested else [[name]]
    return commands


def _times(argv, repeats):
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, text=True)
        out.append(time.perf_counter() - start)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    script = shutil.which("genmetrics")
    base = [script] if script else [sys.executable, "-m", "genmetrics.plugin.cli"]
    empty = tempfile.mkdtemp(prefix="bench_cli_")
    cases = [(" ".join(["genmetrics", *c, "--help"]), [*c, "--help"]) for c in _commands()]
    cases += [
        ("stats build EMPTY -o /nonexistent/x.h5", ["stats", "build", empty, "-o", "/nonexistent/x.h5"]),
        ("stats build EMPTY -o OUT.h5 (empty folder)", ["stats", "build", empty, "-o", os.path.join(empty, "x.h5")]),
        ("fid EMPTY EMPTY (empty folder)", ["fid", empty, empty]),
    ]
    print(f"{os.cpu_count()} CPUs, {args.repeats} runs each, command: {' '.join(base)}")
    print(f"{'invocation':<46} {'first s':>8} {'median s':>9}")
    worst = 0.0
    for label, argv in cases:
        times = _times(base + argv, args.repeats)
        worst = max(worst, statistics.median(times))
        print(f"{label:<46} {times[0]:>8.3f} {statistics.median(times):>9.3f}")
    os.rmdir(empty)
    print(f"slowest median: {worst:.3f} s")


if __name__ == "__main__":
    main()
