"""The background worker: its exit flush (a plain `atexit` handler) and its reset."""
import os
import subprocess
import sys

import pytest

from genmetrics.plugin import background

EXIT_SCRIPT = """
import sys
from genmetrics.plugin import background
from genmetrics.stats.images.threads import thread_map


def resize_all():
    squares = thread_map(lambda x: x * x, range(6))  # the shared image pool, as clean-mode resizing uses it
    with open(sys.argv[1], "w") as f:
        f.write(repr(squares))


background.submit(resize_all, "step 0")
"""


def test_work_still_queued_at_exit_runs_even_after_the_thread_pools_stopped(tmp_path):
    """The script ends without flush(): the exit flush (after `concurrent.futures` stopped its pools) still runs
    the queued work, whose pool work is computed inline."""
    out = tmp_path / "squares.txt"
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(out)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.returncode == 0, done.stderr
    assert out.read_text() == repr([0, 1, 4, 9, 16, 25]), done.stderr
    assert "failed" not in done.stderr, done.stderr


def test_reset_forgets_errors_not_yet_raised():
    background.submit(lambda: 1 / 0, "step 1")
    with pytest.raises(background.BackgroundScoringError, match="step 1 failed"):
        background.flush()
    failing = background.submit(lambda: 1 / 0, "step 2")
    background.reset()
    assert isinstance(failing.exception(), ZeroDivisionError)  # the Future still tells the caller
    background.flush()  # nothing left to raise
    assert background.submit(lambda: 42, "step 3").result() == 42
