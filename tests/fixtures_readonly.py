"""Read-only folders that stay read-only when the tests run as root (as in containers)."""
import os
import shutil
import subprocess

import pytest

__all__ = ["run_without_write_override"]


def run_without_write_override(args, **kwargs):
    """Run `args` as this user but without root's power to write into read-only folders (CAP_DAC_OVERRIDE),
    so that a folder without write permission is read-only to it, as it is to a normal user."""
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv (util-linux): cannot make a folder read-only to the test")
        args = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                "--bounding-set=-dac_override,-dac_read_search", "--"] + list(args)
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
