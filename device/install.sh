#!/usr/bin/env bash
# Install edgecl's device runtime on a Jetson with JetPack 6 (L4T r36, Python 3.10, CUDA 12.6):
#   sudo device/install.sh               a venv in /opt/edgecl, `edgecl` on PATH, the edgecl user and group,
#                                        /var/lib/edgecl shared with the group, the watch service (it starts
#                                        once a bundle is there); the user who ran sudo joins the group
#   sudo device/install.sh --no-service  the venv and `edgecl` only (containers)
# Environment:
#   JETSON_INDEX   NVIDIA's Jetson index, for torch and onnxruntime-gpu (https://pypi.jetson-ai-lab.io/jp6/cu126)
#   WHEELS         a folder of wheels from device/download-wheels.sh: install from it alone, offline
#   EDGECL_SOURCE  edgecl's wheel or checkout (default: the edgecl wheel in WHEELS, else this checkout)
#   PYTHON         JetPack's python3 (python3)
#   PREFIX         where the venv goes (/opt/edgecl)
#   DESTDIR        install below this folder instead of / (tests, images); paths inside the files stay the real ones
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
JETSON_INDEX=${JETSON_INDEX:-https://pypi.jetson-ai-lab.io/jp6/cu126}
WHEELS=${WHEELS:-}
PYTHON=${PYTHON:-python3}
PREFIX=${PREFIX:-/opt/edgecl}
root=${DESTDIR:-}
root=${root%/}

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

service=yes
for arg in "$@"; do
  case $arg in
    --no-service) service=no ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option $arg (see --help)" ;;
  esac
done

[ -n "$root" ] || [ "$(id -u)" = 0 ] || die "run it as root: sudo $0 $*"
command -v "$PYTHON" >/dev/null || die "$PYTHON is missing (sudo apt-get install python3 python3-venv)"
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$version" = 3.10 ] || die "$PYTHON is Python $version; JetPack 6's is 3.10, the one NVIDIA's wheels are built for"
[ -f "$root/etc/nv_tegra_release" ] || say "warning: no /etc/nv_tegra_release; this does not look like a Jetson"

if [ -n "$WHEELS" ]; then
  [ -d "$WHEELS" ] || die "WHEELS=$WHEELS: no such folder"
  jetson=(--no-index --find-links "$WHEELS")
  pypi=("${jetson[@]}")
  wheels=("$WHEELS"/edgecl-*.whl)
  [ -n "${EDGECL_SOURCE:-}" ] || [ -f "${wheels[0]}" ] || die "no edgecl-*.whl in $WHEELS (download-wheels.sh makes it)"
  source=${EDGECL_SOURCE:-${wheels[-1]}}
else
  jetson=(--index-url "$JETSON_INDEX")
  pypi=()
  source=${EDGECL_SOURCE:-$(dirname "$here")}
fi

venv=$root$PREFIX/venv
# --system-site-packages: the venv sees JetPack's TensorRT (python3-libnvinfer, in /usr/lib/python3.10/dist-packages).
"$PYTHON" -m venv --system-site-packages "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# torch and onnxruntime-gpu from NVIDIA's index only: with PyPI beside it, PyPI's aarch64 build (CPU-only, or
# for Grace servers) wins whenever its version is higher or its platform tag more specific.
"${pip[@]}" install "${jetson[@]}" --no-deps -r "$here/requirements-jetson-index.txt"
# PyPI for the rest, with the dependencies of those two: the same pins find them installed, and pip keeps them.
"${pip[@]}" install "${pypi[@]}" -r "$here/requirements-jetpack6.txt" -r "$here/requirements-jetson-index.txt"
# edgecl without its dependencies: those are the host's (timm, onnx, PyPI's torch); reinstalled, so an update lands.
"${pip[@]}" install "${pypi[@]}" --no-deps --force-reinstall "$source"
# PyPI refuses plain linux_* wheels (it wants manylinux), NVIDIA's index serves those: the tag tells where each is from.
"$venv/bin/python" - <<'EOF' || die "torch or onnxruntime-gpu is not NVIDIA's Jetson build (see above)"
import sys
from importlib.metadata import distribution

for name in ("torch", "onnxruntime-gpu"):
    wheel = distribution(name).read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    if not any(tag.rsplit("-", 1)[-1].startswith("linux_") for tag in tags):
        sys.exit(f"{name} {distribution(name).version}: a {', '.join(tags) or 'untagged'} wheel, PyPI's, not NVIDIA's")
EOF
"$venv/bin/python" -c 'import tensorrt' 2>/dev/null \
  || say "warning: the venv cannot import tensorrt (apt-get install python3-libnvinfer); edgecl will use onnxruntime"
mkdir -p "$root/usr/local/bin"
ln -sfn "$PREFIX/venv/bin/edgecl" "$root/usr/local/bin/edgecl"

if [ "$service" = yes ]; then
  if ! command -v systemd-sysusers >/dev/null || ! command -v systemd-tmpfiles >/dev/null; then
    die "systemd-sysusers or systemd-tmpfiles is missing: the service needs systemd (or use --no-service)"
  fi
  at=()
  [ -z "$root" ] || at=(--root="$root")
  mkdir -p "$root/etc/systemd/system"
  install -D -m 644 "$here/edgecl.sysusers" "$root/usr/lib/sysusers.d/edgecl.conf"
  install -D -m 644 "$here/edgecl.tmpfiles" "$root/usr/lib/tmpfiles.d/edgecl.conf"
  systemd-sysusers "${at[@]}" "$root/usr/lib/sysusers.d/edgecl.conf"
  systemd-tmpfiles "${at[@]}" --create "$root/usr/lib/tmpfiles.d/edgecl.conf"
  for unit in edgecl-watch.service edgecl-watch.path; do
    sed "s|/opt/edgecl|$PREFIX|g" "$here/$unit" >"$root/etc/systemd/system/$unit"
    chmod 644 "$root/etc/systemd/system/$unit"
  done
  # The path unit starts the service once a bundle is in /var/lib/edgecl/bundle: no sudo after this script.
  if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now edgecl-watch.path
    systemctl try-restart edgecl-watch.service   # an update: the new code from now on
  else
    systemctl "${at[@]}" enable edgecl-watch.path
  fi
  if [ -z "$root" ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    usermod -aG edgecl "$SUDO_USER"
    say "added $SUDO_USER to the edgecl group: log in again (or run newgrp edgecl) to use /var/lib/edgecl"
  fi
  say "installed edgecl-watch; it starts once a bundle is in /var/lib/edgecl/bundle"
fi
"$venv/bin/edgecl" --version
