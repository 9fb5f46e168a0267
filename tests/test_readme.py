"""README.md's quick start runs as printed: its shell block, then its Python block (.ci/readme_quickstart.py;
CI runs the same script again against the installed wheel)."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import requires_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent


def test_readme_stays_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300 and lines[0] == "# edgecl"
    assert any(line.startswith("pip install") for line in lines[:40]), "README starts with pip install"


@requires_fashion_mnist
def test_the_quick_start_runs_as_printed(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_quickstart.py"), str(ROOT / "README.md")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "$ edgecl classify" in done.stdout and "$ python" in done.stdout
