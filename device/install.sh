#!/usr/bin/env bash
# Install edgecl's device runtime on a Jetson with JetPack 6:
#   sudo device/install.sh                 # venv in /opt/edgecl, `edgecl` on PATH, the watch service
#   sudo device/install.sh --no-service    # without the systemd unit (containers)
# Environment: PREFIX (/opt/edgecl), DATA (/var/lib/edgecl), JETSON_INDEX (NVIDIA's JetPack 6 wheels
# for torch and onnxruntime-gpu), EDGECL_SOURCE (this checkout, or a wheel file).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/opt/edgecl}
DATA=${DATA:-/var/lib/edgecl}
JETSON_INDEX=${JETSON_INDEX:-https://pypi.jetson-ai-lab.io/jp6/cu126}
EDGECL_SOURCE=${EDGECL_SOURCE:-$(dirname "$here")}
service=yes
[ "${1:-}" = "--no-service" ] && service=no

say() { echo "install.sh: $*" >&2; }
command -v python3 >/dev/null || { say "python3 is missing (apt-get install python3 python3-venv)"; exit 1; }
[ -f /etc/nv_tegra_release ] || say "warning: no /etc/nv_tegra_release; this does not look like a Jetson"
python3 -c 'import tensorrt' 2>/dev/null \
  || say "warning: python3 cannot import tensorrt (apt-get install python3-libnvinfer); edgecl will fall back to onnxruntime"

# --system-site-packages: the venv sees JetPack's tensorrt bindings.
python3 -m venv --system-site-packages "$PREFIX/venv"
pip="$PREFIX/venv/bin/python -m pip"
$pip install --upgrade pip
$pip install --extra-index-url "$JETSON_INDEX" torch onnxruntime-gpu
$pip install -r "$here/requirements-jetpack6.txt"
$pip install --no-deps "$EDGECL_SOURCE"   # no deps: they are the lines above, never PyPI's x86 builds
ln -sf "$PREFIX/venv/bin/edgecl" /usr/local/bin/edgecl
mkdir -p "$DATA/inbox" "$DATA/done" "$DATA/cache"

if [ "$service" = yes ] && command -v systemctl >/dev/null; then
  install -m 644 "$here/edgecl-watch.service" /etc/systemd/system/edgecl-watch.service
  systemctl daemon-reload
  say "installed edgecl-watch.service; copy a bundle to $DATA/bundle, then: systemctl enable --now edgecl-watch"
fi
"$PREFIX/venv/bin/edgecl" --version
