"""The Jetson kit in device/: scripts parse, and every command line in it exists in the CLI."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecl.cli.app import app

DEVICE = Path(__file__).resolve().parent.parent / "device"


@pytest.mark.parametrize("script", ["install.sh", "camera-to-inbox.sh"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(DEVICE / script)]).returncode == 0


def watch_flags() -> str:
    return CliRunner().invoke(app, ["watch", "--help"]).output


def test_service_unit_runs_an_existing_command():
    unit = (DEVICE / "edgecl-watch.service").read_text()
    command = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.M).group(1))
    assert command[0].endswith("/edgecl") and command[1] == "watch"
    for flag in (a for a in command if a.startswith("--")):
        assert flag in watch_flags(), flag
    assert "Environment=EDGECL_BUNDLE=" in unit


def test_container_command_exists_and_install_keeps_pypi_builds_out():
    dockerfile = (DEVICE / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{L4T_BASE\}", dockerfile, re.M) and "l4t-jetpack" in dockerfile
    cmd = re.search(r"^CMD \[(.*)\]$", dockerfile, re.M).group(1)
    for flag in re.findall(r'"(--[a-z-]+)"', cmd):
        assert flag in watch_flags(), flag
    requirements = (DEVICE / "requirements-jetpack6.txt").read_text()
    packages = {re.split(r"[<>=]", line)[0] for line in requirements.splitlines() if line and not line.startswith("#")}
    assert packages.isdisjoint({"torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "timm", "onnx", "torchvision"})
    assert "--no-deps" in (DEVICE / "install.sh").read_text()
