"""No test can hang the suite: pytest-timeout bounds every test (pyproject's `timeout`), and a test
that passes it fails with the stacks of every thread instead of waiting for ever."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_test_has_a_timeout(request):
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed (the test extra)"
    assert float(request.config.getini("timeout")) == 300
    assert request.node.get_closest_marker("timeout") is None     # this one runs under the default


def test_a_test_that_hangs_fails_at_its_timeout_and_the_run_goes_on(tmp_path):
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hangs():\n    time.sleep(600)\n\n"
                                           "def test_after():\n    pass\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path),
                          "-p", "no:cacheprovider", "-n", "0", "-o", "timeout=2", str(tmp_path / "test_hang.py")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "Timeout (>2.0s) from pytest-timeout" in out.stdout and "1 failed, 1 passed" in out.stdout, out.stdout[-3000:]
