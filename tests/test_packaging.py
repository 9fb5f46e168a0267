"""The wheel carries the whole package: every module of the source tree and the target profiles."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (found,) = out.glob("edgecl-*.whl")
    return zipfile.ZipFile(found)


def test_every_module_and_profile_of_the_source_tree_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    source = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "edgecl").rglob("*")
        if p.is_file() and p.suffix in (".py", ".json") and "__pycache__" not in p.parts
    }
    assert source and not source - names, sorted(source - names)
    assert any(n.startswith("edgecl/host/profiles/") and n.endswith(".json") for n in names)
    assert not [n for n in names if n.split("/")[0] not in ("edgecl",) and not n.startswith("edgecl-")], (
        "only edgecl is installed"
    )


def test_the_wheel_declares_the_console_script_and_the_extras(wheel):
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    text = wheel.read(meta).decode()
    for extra in ("tensorrt", "plot", "lite2"):
        assert f"Provides-Extra: {extra}" in text
    entry = wheel.read(next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "edgecl = edgecl.cli:main" in entry
