"""The Jetson kit in device/: its scripts pass shellcheck, its units systemd-analyze, install.sh lays out a
temporary root as it would a Jetson (with a fake JetPack python), every command line in it exists in the CLI,
the container's entry point and health check, the camera pipelines, the bundle's lock shared by a group, and
watch's retention of done/ and the log."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecl.cli.app import app
from edgecl.core.files import locked
from edgecl.errors import EdgeclError
from edgecl.runtime.watch import watch_folder

DEVICE = Path(__file__).resolve().parent.parent / "device"
SCRIPTS = sorted(p.name for p in DEVICE.glob("*.sh"))
JETSON_INDEX = "https://pypi.jetson-ai-lab.io/jp6/cu126"
is_root = os.geteuid() == 0
needs_shellcheck = pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck not installed (apt-get install shellcheck; make test installs it)",
)
needs_systemd = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("systemd-analyze", "systemd-sysusers", "systemd-tmpfiles", "systemctl")),
    reason="systemd's tools not installed (apt-get install systemd; make test installs it)",
)
needs_root = pytest.mark.skipif(not is_root, reason="acting as two users of one group takes root (setuid in a child)")


def help_of(*command: str) -> str:
    return CliRunner().invoke(app, [*command, "--help"]).output


def unit_command(unit: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", (DEVICE / unit).read_text())  # systemd joins a line ending in a backslash
    return shlex.split(re.search(r"^ExecStart=(.*)$", text, re.M).group(1))


def test_every_script_is_listed_parses_and_is_executable():
    assert {
        "install.sh",
        "camera-to-inbox.sh",
        "download-wheels.sh",
        "container-entrypoint.sh",
        "check-device.sh",
    } <= set(SCRIPTS)
    for script in SCRIPTS:
        path = DEVICE / script
        shell = "sh" if path.read_text().startswith("#!/bin/sh") else "bash"
        assert subprocess.run([shell, "-n", str(path)]).returncode == 0, script
        assert os.access(path, os.X_OK), f"{script} is not executable"


@needs_shellcheck
def test_every_script_passes_shellcheck():
    result = subprocess.run(["shellcheck", *SCRIPTS], cwd=DEVICE, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_service_unit_runs_an_existing_command_as_the_edgecl_user():
    unit = (DEVICE / "edgecl-watch.service").read_text()
    command = unit_command("edgecl-watch.service")
    assert command[0] == "/opt/edgecl/venv/bin/edgecl" and command[1] == "watch"
    for flag in (a for a in command if a.startswith("--")):
        assert flag in help_of("watch"), flag
    assert {"--done", "--keep-done-mb", "--log-max-mb"} <= set(command)  # months of frames must not fill the disk
    for line in (
        "User=edgecl",
        "StateDirectory=edgecl",
        "StateDirectoryMode=2775",
        "UMask=0002",
        "RuntimeDirectory=edgecl",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Environment=EDGECL_BUNDLE=/var/lib/edgecl/bundle",
    ):
        assert re.search(f"^{line}$", unit, re.M), line
    # each of these would stop the GPU
    assert not re.search(r"^(PrivateDevices|ProtectClock|MemoryDenyWriteExecute)=", unit, re.M)
    tmpfiles = (DEVICE / "edgecl.tmpfiles").read_text()
    for folder in ("", "/bundle", "/inbox", "/done", "/log", "/cache"):
        assert re.search(rf"^d /var/lib/edgecl{folder}\s+2775 edgecl edgecl -$", tmpfiles, re.M), folder
    assert str(Path(command[command.index("--log") + 1]).parent) == "/var/lib/edgecl/log"


@needs_systemd
def test_units_pass_systemd_analyze_verify(tmp_path):
    program = tmp_path / "edgecl"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    for unit in ("edgecl-watch.service", "edgecl-watch.path"):  # verify wants ExecStart's program to exist
        (tmp_path / unit).write_text((DEVICE / unit).read_text().replace("/opt/edgecl/venv/bin/edgecl", str(program)))
    units = [str(tmp_path / "edgecl-watch.service"), str(tmp_path / "edgecl-watch.path")]
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "edgecl-watch" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_container_runs_an_existing_command_and_install_keeps_pypi_builds_out():
    dockerfile = re.sub(r"\\\n\s*", " ", (DEVICE / "Dockerfile").read_text())
    assert re.search(r"^FROM \$\{L4T_BASE\}", dockerfile, re.M) and "l4t-jetpack" in dockerfile
    cmd = re.search(r"^CMD \[(.*)\]$", dockerfile, re.M).group(1)
    flags = re.findall(r'"(--[a-z-]+)"', cmd)
    assert cmd.startswith('"watch"') and {"--done", "--keep-done-mb", "--log-max-mb"} <= set(flags)
    for flag in flags:
        assert flag in help_of("watch"), flag
    assert re.search(r'^ENTRYPOINT \["/opt/edgecl/entrypoint"\]$', dockerfile, re.M)
    assert re.search(r"^HEALTHCHECK .*/opt/edgecl/healthcheck", dockerfile, re.M)
    assert "install.sh --no-service" in dockerfile and "--runtime nvidia" in dockerfile
    assert not re.search(r"^(COPY|ADD) \. ", dockerfile, re.M)  # the checkout's .venv and .git stay out of the image
    requirements = (DEVICE / "requirements-jetpack6.txt").read_text()
    packages = {re.split(r"[<>=]", line)[0] for line in requirements.splitlines() if line and not line.startswith("#")}
    assert packages.isdisjoint({"torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "timm", "onnx", "torchvision"})
    pins = (DEVICE / "requirements-jetson-index.txt").read_text().splitlines()
    pins = [line for line in pins if line and line[0] != "#"]
    assert sorted(line.split("==")[0] for line in pins) == ["onnxruntime-gpu", "torch"]
    assert all(re.fullmatch(r"[a-z-]+==\d+(\.\d+)+", line) for line in pins), pins


def test_every_edgecl_command_in_the_readme_exists():
    readme = (DEVICE / "README.md").read_text()
    found = re.findall(r"^(edgecl [^#\n]*)|`(edgecl [^`]*)`|/opt/edgecl/entrypoint ([^#\n]*)", readme, re.M)
    commands = [shlex.split(block or inline or "edgecl " + container) for block, inline, container in found]
    assert len(commands) >= 10
    for words in commands:
        sub = [w for w in words[1:3] if not w.startswith("-") and "/" not in w][: 2 if words[1] == "engine" else 1]
        text = help_of(*sub)
        assert "Usage" in text, words
        for flag in (w for w in words if w.startswith("-")):
            assert flag in text, (words, flag)


FAKE_PYTHON = r"""#!/usr/bin/env bash
# JetPack 6's python3 as install.sh sees it: Python 3.10, tensorrt importable; `-m venv DIR` copies this
# script to DIR/bin/python, whose `-m pip` is only logged, but makes bin/edgecl when edgecl is installed.
here=$(cd "$(dirname "$0")" && pwd)
echo "$*" >>"@LOG@"
case $1 in
  -c) if [[ $2 == *version_info* ]]; then echo 3.10; fi ;;
  -) cat >/dev/null ;;
  -m)
    case $2 in
      venv)
        dir=${!#}
        mkdir -p "$dir/bin"
        cp "$0" "$dir/bin/python"
        if [[ " $* " == *" --system-site-packages "* ]]; then
          echo "include-system-site-packages = true" >"$dir/pyvenv.cfg"
        fi ;;
      pip)
        if [[ " $* " == *" --no-deps --force-reinstall "* ]]; then
          printf '#!/bin/sh\necho "edgecl 0.1.0 (fake)"\n' >"$here/edgecl"
          chmod 755 "$here/edgecl"
        fi ;;
    esac ;;
esac
"""


def run_install(
    tmp_path: Path,
    *args: str,
    **env: str,
) -> tuple[Path, list[list[str]], subprocess.CompletedProcess, Path]:
    """install.sh into tmp_path/root with the fake python; as root, or under fakeroot for the owners."""
    root, log, python = tmp_path / "root", tmp_path / "python.log", tmp_path / "jetpack" / "python3"
    python.parent.mkdir()
    python.write_text(FAKE_PYTHON.replace("@LOG@", str(log)))
    python.chmod(0o755)
    state = tmp_path / "fakeroot.state"
    command = [str(DEVICE / "install.sh"), *args]
    if not is_root:
        if shutil.which("fakeroot") is None:
            pytest.skip("install.sh sets owners: run as root, or install fakeroot (apt-get install fakeroot)")
        command = ["fakeroot", "-s", str(state), "--", *command]
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DESTDIR": str(root), "PYTHON": str(python)}
    environment.update(env)
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    calls = [line.split() for line in log.read_text().splitlines()]
    return root, calls, result, state


def listing(root: Path, state: Path) -> dict[str, tuple[str, int, int]]:
    """path below root -> (octal mode, uid, gid), as root or as fakeroot recorded them."""
    command = ["find", str(root), "-printf", r"%P\t%m\t%U\t%G\n"]
    if not is_root:
        command = ["fakeroot", "-i", str(state), "--", *command]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    return {path: (mode, int(uid), int(gid)) for path, mode, uid, gid in (line.split("\t") for line in lines)}


def pip_installs(calls: list[list[str]]) -> list[list[str]]:
    return [c[c.index("install") + 1 :] for c in calls if c[:2] == ["-m", "pip"] and "install" in c]


@needs_systemd
def test_install_lays_out_a_root_with_the_user_group_folders_and_service(tmp_path):
    root, calls, result, state = run_install(tmp_path)
    assert result.stdout.strip() == "edgecl 0.1.0 (fake)"
    venv = root / "opt/edgecl/venv"
    assert ["-m", "venv", "--system-site-packages", str(venv)] in calls  # JetPack's tensorrt stays visible
    jetson, pypi, edgecl = pip_installs(calls)
    assert jetson == ["--index-url", JETSON_INDEX, "--no-deps", "-r", str(DEVICE / "requirements-jetson-index.txt")]
    assert pypi == ["-r", str(DEVICE / "requirements-jetpack6.txt"), "-r", jetson[-1]]
    assert edgecl == ["--no-deps", "--force-reinstall", str(DEVICE.parent)]
    assert not any("--extra-index-url" in c for c in calls)  # PyPI beside NVIDIA's index lets PyPI's torch win

    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    group = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    user = passwd["edgecl"]
    assert user[5:] == ["/var/lib/edgecl", "/usr/sbin/nologin"] and user[3] == group["edgecl"][2]
    assert "edgecl" in group["video"][3].split(",")  # the GPU's device nodes
    uid, gid = int(user[2]), int(group["edgecl"][2])
    files = listing(root, state)
    for folder in ("var/lib/edgecl", *(f"var/lib/edgecl/{f}" for f in ("bundle", "inbox", "done", "log", "cache"))):
        assert files[folder] == ("2775", uid, gid), folder
    for unit in ("edgecl-watch.service", "edgecl-watch.path"):
        assert files[f"etc/systemd/system/{unit}"][0] == "644"
        assert (root / "etc/systemd/system" / unit).read_text() == (DEVICE / unit).read_text()
    enabled = root / "etc/systemd/system/paths.target.wants/edgecl-watch.path"
    assert os.readlink(enabled) == "/etc/systemd/system/edgecl-watch.path"
    assert files["usr/lib/sysusers.d/edgecl.conf"][0] == files["usr/lib/tmpfiles.d/edgecl.conf"][0] == "644"
    assert os.readlink(root / "usr/local/bin/edgecl") == "/opt/edgecl/venv/bin/edgecl"


def test_install_offline_for_a_container_uses_the_wheels_folder_alone(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "edgecl-0.1.0-py3-none-any.whl").write_bytes(b"")
    root, calls, result, _ = run_install(tmp_path, "--no-service", WHEELS=str(wheels))
    installs = pip_installs(calls)
    assert len(installs) == 3 and all(c[:3] == ["--no-index", "--find-links", str(wheels)] for c in installs), installs
    assert installs[0][3] == "--no-deps" and installs[2][-1] == str(wheels / "edgecl-0.1.0-py3-none-any.whl")
    assert not (root / "etc").exists() and not (root / "var").exists()  # no users, folders or units in an image
    assert (root / "opt/edgecl/venv/bin/edgecl").exists()


FAKE_PIP = r"""#!/usr/bin/env bash
# python -m pip as download-wheels.sh uses it, for a machine without internet: each call logged, NVIDIA's
# index "serves" its two wheels, `pip wheel` makes edgecl's.
echo "$*" >>"@LOG@"
dest=$(for a in "$@"; do [ "${prev:-}" = --dest ] || [ "${prev:-}" = --wheel-dir ] && echo "$a"; prev=$a; done)
if [[ " $* " == *" --index-url "* ]]; then
  touch "$dest/torch-2.8.0-cp310-cp310-linux_aarch64.whl" "$dest/onnxruntime_gpu-1.23.0-cp310-cp310-linux_aarch64.whl"
elif [[ $3 == wheel ]]; then
  touch "$dest/edgecl-0.1.0-py3-none-any.whl"
fi
"""


def test_download_wheels_fetches_cp310_aarch64_and_the_jetson_pair_from_nvidia_alone(tmp_path):
    log, python, dest = tmp_path / "pip.log", tmp_path / "python3", tmp_path / "wheels"
    python.write_text(FAKE_PIP.replace("@LOG@", str(log)))
    python.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "PYTHON": str(python)}
    result = subprocess.run([str(DEVICE / "download-wheels.sh"), str(dest)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    jetson, rest, wheel = (shlex.split(line) for line in log.read_text().splitlines())
    for call in (jetson, rest):
        assert call[:3] == ["-m", "pip", "--disable-pip-version-check"] and call[3] == "download"
        flags = " ".join(call)
        assert "--only-binary=:all: --implementation cp --python-version 3.10 --abi cp310" in flags, call
        platforms = {call[i + 1] for i, word in enumerate(call) if word == "--platform"}
        assert {"linux_aarch64", "manylinux2014_aarch64", "manylinux_2_35_aarch64"} <= platforms
        assert not any("x86_64" in p for p in platforms) and "--extra-index-url" not in call
    assert jetson[jetson.index("--index-url") + 1] == JETSON_INDEX and "--no-deps" in jetson
    assert jetson[-2:] == ["-r", str(DEVICE / "requirements-jetson-index.txt")]
    assert "--index-url" not in rest and str(dest / "torch-2.8.0-cp310-cp310-linux_aarch64.whl") in rest
    assert wheel[3:] == ["wheel", "--no-deps", "--wheel-dir", str(dest), str(DEVICE.parent)]
    assert "sudo WHEELS=" in result.stderr


def test_install_refuses_a_python_other_than_jetpacks(tmp_path):
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\necho 3.12\n")
    python.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "DESTDIR": str(tmp_path / "r"), "PYTHON": str(python)}
    result = subprocess.run([str(DEVICE / "install.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "Python 3.12; JetPack 6's is 3.10" in result.stderr
    assert not (tmp_path / "r").exists()


def test_container_entrypoint_makes_the_volume_layout_then_runs_the_command(tmp_path):
    data = tmp_path / "volume"
    env = {"PATH": os.environ["PATH"], "EDGECL_DATA": str(data), "EDGECL": "echo"}
    entrypoint = str(DEVICE / "container-entrypoint.sh")
    result = subprocess.run([entrypoint, "info"], env=env, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0 and result.stdout.split() == ["info"]
    for folder in ("bundle", "inbox", "done", "log", "cache"):
        assert (data / folder).is_dir() and (data / folder).stat().st_mode & 0o070 == 0o070, folder  # group-writable

    # watch waits for a bundle instead of failing into the container's restart loop
    watch = subprocess.Popen([entrypoint, "watch", str(data / "inbox")], env=env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert watch.poll() is None
        (data / "bundle" / "manifest.json").write_text("{}")
        assert watch.communicate(timeout=10)[0].split() == ["watch", str(data / "inbox")]
    finally:
        watch.kill()


def test_container_health_check(tmp_path):
    data = tmp_path / "volume"
    env = {"PATH": os.environ["PATH"], "EDGECL_DATA": str(data), "BACKLOG": "3"}

    def health() -> subprocess.CompletedProcess:
        return subprocess.run([str(DEVICE / "container-healthcheck.sh")], env=env, capture_output=True, text=True)

    assert health().returncode == 1
    subprocess.run([str(DEVICE / "container-entrypoint.sh")], env={**env, "EDGECL": "true"}, check=True)
    assert health().returncode == 1 and "no bundle" in health().stdout
    (data / "bundle" / "manifest.json").write_text("{}")
    assert health().returncode == 0
    old = time.time() - 600
    for n in range(4):
        image = data / "inbox" / f"frame-{n}.jpg"
        image.write_bytes(b"jpeg")
        os.utime(image, (old, old) if n < 3 else None)
    assert health().returncode == 0  # three stuck, one new: within the backlog
    os.utime(image, (old, old))
    assert health().returncode == 1 and "waiting" in health().stdout


def camera(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DEVICE / "camera-to-inbox.sh"), "--print", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, source, leaves_gpu",
    [
        ((), "nvarguscamerasrc", "nvvidconv"),
        (("--rtsp", "rtsp://camera/stream", "--codec", "h265"), "rtspsrc", "nvvidconv"),
        (("--usb", "/dev/video1"), "v4l2src", "videoconvert"),
    ],
)
def test_camera_drops_frames_before_they_leave_the_gpu(args, source, leaves_gpu):
    result = camera(*args, "--rate", "1/5", "--keep", "7", "--inbox", "/tmp/in")
    assert result.returncode == 0, result.stderr
    words = shlex.split(result.stdout)
    assert words[:3] == ["gst-launch-1.0", "-e", source]
    rate = words.index("videorate")
    assert words[rate + 1] == "drop-only=true" and rate < words.index(leaves_gpu)
    caps = words[rate + 3]
    assert caps.endswith("framerate=1/5") and (caps.startswith("video/x-raw(memory:NVMM)") == (source != "v4l2src"))
    assert words.index("jpegenc") > words.index(leaves_gpu) and "max-files=7" in words
    location = next(w for w in words if w.startswith("location=/"))
    assert re.fullmatch(r"location=/tmp/in/[a-z]+-\d{8}-\d{6}-%06d\.jpg", location), location
    if source == "rtspsrc":
        assert words[3] == "location=rtsp://camera/stream" and "rtph265depay" in words and "nvv4l2decoder" in words


@pytest.mark.parametrize(
    "args, message",
    [
        (("--rate", "0"), "--rate 0"),
        (("--rate", "fast"), "--rate fast"),
        (("--size", "720p"), "--size 720p"),
        (("--codec", "vp9", "--rtsp", "rtsp://c/s"), "--codec vp9"),
        (("--usb",), "--usb needs a value"),
        (("--fps", "1"), "unknown option --fps"),
        (("--csi", "front"), "--csi front"),
    ],
)
def test_camera_refuses_bad_options(args, message):
    result = camera(*args)
    assert result.returncode == 2 and message in result.stderr and not result.stdout


FAKE_EDGECL = r"""#!/usr/bin/env bash
# edgecl as check-device.sh sees it on a Jetson whose onnxruntime is broken: each call logged, learn writes
# into the bundle it is given.
echo "$*" >>"@LOG@"
bundle=$(for a in "$@"; do [ "${prev:-}" = -b ] && echo "$a"; prev=$a; done)
case $1 in
  --version) echo "edgecl 0.1.0 (fake)" ;;
  info) echo '{"runtime": "tensorrt", "runtime_reason": "TensorRT 10.3 on Orin", "heads_runtime": "torch"}' ;;
  engine) echo "built engines/orin.engine in 212 s" ;;
  classify)
    if [[ " $* " == *" --runtime onnxruntime "* ]]; then echo "error: libonnxruntime: cannot open" >&2; exit 1; fi
    label=red; [ -f "$bundle/learned" ] && label=check-stripes
    echo "[{\"path\": \"a.png\", \"label\": \"$label\"}, {\"path\": \"b.png\", \"label\": \"$label\"}]" ;;
  learn)
    touch "$bundle/learned"
    echo '{"images": 8, "classes": ["check-stripes"], "seconds_heads": 1.25, "runtime": "tensorrt"}' ;;
esac
"""


def test_check_device_reports_every_step_on_a_copy_of_the_bundle(tmp_path):
    bundle, log, edgecl = tmp_path / "bundle", tmp_path / "edgecl.log", tmp_path / "bin" / "edgecl"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    edgecl.parent.mkdir()
    edgecl.write_text(FAKE_EDGECL.replace("@LOG@", str(log)))
    edgecl.chmod(0o755)
    env = {"PATH": f"{edgecl.parent}:{os.environ['PATH']}", "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [str(DEVICE / "check-device.sh"), str(bundle)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr  # one step failed
    report = result.stdout
    assert report.startswith("```\nedgecl device check") and report.endswith("1 failed\n```\n"), report
    for step, says in [
        ("info", "ok .* tensorrt \\(TensorRT 10.3 on Orin\\); heads torch"),
        ("engine build", "ok .* built engines/orin.engine"),
        ("classify", "ok .* 2 images, \\['red'\\]"),
        ("classify onnxruntime", "FAILED .* exit 1:\n    error: libonnxruntime: cannot open"),
        ("learn", "ok .* 8 images of \\['check-stripes'\\], heads 1.2 s, runtime tensorrt"),
        ("classify after learn", "ok .* 2 images, \\['check-stripes'\\]"),
    ]:
        assert re.search(f"^{step} +{says}", report, re.M), (step, report)
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json"]  # learn changed the copy
    assert not list(tmp_path.glob("edgecl-check.*"))  # the copy and the synthetic images removed
    for call in (shlex.split(line) for line in log.read_text().splitlines()):
        sub = call[:2] if call[0] == "engine" else call[:1]
        copy = call[call.index("-b") + 1] if "-b" in call else None
        assert copy is None or (copy != str(bundle) and copy.endswith("/bundle")), call
        text = help_of(*sub) if sub != ["--version"] else help_of()
        for flag in (w for w in call if w.startswith("-")):
            assert flag in text, (call, flag)


def test_check_device_needs_a_bundle(tmp_path):
    result = subprocess.run(
        [str(DEVICE / "check-device.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "EDGECL": "true"},
    )
    assert result.returncode == 2 and "no bundle (no manifest.json)" in result.stderr and not result.stdout


# The bundle's lock, shared by the group that shares /var/lib/edgecl.


def test_lock_is_created_group_writable_whatever_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with locked(tmp_path, timeout=1):
            pass
    finally:
        os.umask(previous)
    lock = tmp_path / ".lock"
    assert lock.stat().st_mode & 0o777 == 0o664 and lock.read_text() == f"{os.getpid()}\n"


def test_lock_never_follows_a_planted_symbolic_link(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    (tmp_path / ".lock").symlink_to(target)
    with pytest.raises(EdgeclError, match="is a symbolic link"):
        with locked(tmp_path, timeout=1):
            pass
    assert target.read_text() == "precious\n"


@pytest.mark.skipif(is_root, reason="root reads and writes any file; the two-user test covers this as root")
def test_a_lock_we_cannot_write_is_still_taken_read_only(tmp_path):
    with locked(tmp_path, timeout=1):
        pass
    (tmp_path / ".lock").chmod(0o444)
    with locked(tmp_path, timeout=1):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"  # ours from before: a read-only lock keeps it


@pytest.fixture
def shared_folder():
    """A folder like /var/lib/edgecl/bundle: group GROUP, setgid, 2775, below a path every user can walk."""
    top = Path(tempfile.mkdtemp(prefix="edgecl-shared-", dir="/tmp"))
    top.chmod(0o755)
    folder = top / "bundle"
    folder.mkdir()
    os.chown(folder, 0, GROUP)
    folder.chmod(0o2775)
    yield folder
    shutil.rmtree(top)


GROUP, ALICE, BOB = 47000, 47001, 47002  # numeric ids that need no passwd entry


def as_user(uid: int, action, *, groups=(GROUP,)) -> tuple[int, str, int]:
    """Run `action()` in a child process as uid (umask 022, like a service or sudo): its exit code, what it
    returned or raised, and its pid."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            os.setgroups(list(groups))
            os.setgid(groups[0])
            os.setuid(uid)
            os.umask(0o022)
            os.write(write, str(action()).encode())
            code = 0
        except BaseException as error:  # noqa: B036 - the child reports whatever happened, then exits
            os.write(write, f"{type(error).__name__}: {error}".encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), said, pid


def take(folder: Path, timeout: float = 1.0, hold: float = 0.0):
    """An action: lock the bundle, hold it `hold` seconds, return what the lock file says."""

    def action():
        with locked(folder, timeout=timeout):
            time.sleep(hold)
            return (folder / ".lock").read_text().strip()

    return action


@needs_root
def test_lock_shared_by_two_users_of_one_group(shared_folder):
    lock = shared_folder / ".lock"
    with locked(shared_folder, timeout=1):  # root first: the service building the engine, or a sudo
        pass
    assert (lock.stat().st_mode & 0o777, lock.stat().st_uid, lock.stat().st_gid) == (0o664, 0, GROUP)
    code, said, bob = as_user(BOB, take(shared_folder))
    assert (code, said) == (0, str(bob))  # bob took it, read-write: his pid is in it

    alice = []
    holder = threading.Thread(target=lambda: alice.append(as_user(ALICE, take(shared_folder, hold=3.0))))
    holder.start()
    deadline = time.monotonic() + 10
    while lock.read_text().strip() == str(bob) and time.monotonic() < deadline:
        time.sleep(0.02)
    code, said, _ = as_user(BOB, take(shared_folder, timeout=0.2))
    holder.join()
    ((alice_code, alice_said, alice_pid),) = alice
    assert alice_code == 0 and alice_said == str(alice_pid)
    assert code == 1 and f"another edgecl process (pid {alice_pid}) is updating this bundle" in said, said

    lock.chmod(0o644)  # left 0644 by an older edgecl: bob cannot write it, and takes it read-only
    code, said, _ = as_user(BOB, take(shared_folder))
    assert (code, said) == (0, str(alice_pid))  # taken; the pid of the last writer stays


# Retention: done/ and the log stay bounded on a device that runs for months.


def test_watch_keeps_done_bounded_and_rotates_the_log(bundle, base_images, tmp_path):
    inbox, done, log = tmp_path / "inbox", tmp_path / "done", tmp_path / "log" / "predictions.jsonl"
    done.mkdir()
    for n in range(3):  # there before this run: the first to go
        (done / f"old-{n}.png").write_bytes((base_images / "red" / "img_000.png").read_bytes())
    time.sleep(0.05)
    shutil.copytree(base_images / "green", inbox)
    log.parent.mkdir()
    log.write_text("x" * 600 + "\n")
    kept = {"keep_done": 4, "log_max_mb": 0.0005, "log_keep": 2}
    assert watch_folder(bundle, inbox, log, done=done, once=True, **kept) == 6
    assert len(list(done.iterdir())) == 4 and not list(done.glob("old-*"))
    assert (log.parent / "predictions.jsonl.1").read_text().startswith("xxx")  # the old log, rotated before the append
    assert len(log.read_text().splitlines()) == 6
    for colour in ("red", "blue"):
        shutil.copy(base_images / colour / "img_001.png", inbox / f"{colour}.png")
        assert watch_folder(bundle, inbox, log, done=done, once=True, **kept) == 1
    logs = sorted(p.name for p in log.parent.iterdir())
    assert logs == ["predictions.jsonl", "predictions.jsonl.1", "predictions.jsonl.2"]
    assert "xxx" not in "".join(p.read_text() for p in log.parent.iterdir())  # the oldest went
    assert [json.loads(line)["path"] for line in log.read_text().splitlines()] == [str(inbox / "blue.png")]
    assert len(list(done.iterdir())) == 4 and (done / "blue.png").exists()

    size = sum(p.stat().st_size for p in done.iterdir())
    watch_folder(bundle, inbox, log, done=done, once=True, keep_done_mb=(size - 1) / 1e6)
    assert len(list(done.iterdir())) == 3 and sum(p.stat().st_size for p in done.iterdir()) < size


def test_watch_retention_needs_done_and_sane_values(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    bundle = tmp_path / "no-bundle"  # each check comes before the bundle is opened
    for kwargs, message in [
        ({"keep_done": 5}, "keep_done bounds the images moved to done; give done too"),
        ({"keep_done_mb": 5.0}, "keep_done_mb bounds"),
        ({"done": tmp_path / "done", "keep_done": -1}, "keep_done -1: give 0 or more"),
        ({"done": tmp_path / "done", "keep_done_mb": 0.0}, "keep_done_mb 0.0: give a size above 0"),
        ({"log_max_mb": -2.0}, "log_max_mb -2.0"),
        ({"log_keep": -1}, "log_keep -1"),
    ]:
        with pytest.raises(EdgeclError, match=re.escape(message)):
            watch_folder(bundle, inbox, tmp_path / "log.jsonl", once=True, **kwargs)
    result = CliRunner().invoke(app, ["watch", str(inbox), "--log", str(tmp_path / "log.jsonl"), "--keep-done", "5"])
    assert result.exit_code == 1 and "--keep-done bounds the images moved to --done; give --done too" in result.stderr
