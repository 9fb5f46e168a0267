#!/usr/bin/env bash
# Checks edgecl on a real device and prints a short report to paste back: the board, JetPack, torch, TensorRT
# and onnxruntime as the venv sees them, then `edgecl info`, an engine build, a classify with each runtime, a
# learn and a classify after it, each timed, on a copy of the bundle (the bundle itself is never changed):
#   device/check-device.sh                          the bundle in /var/lib/edgecl/bundle, synthetic images
#   device/check-device.sh BUNDLE [IMAGES]          IMAGES: one class's images (or class folders) to learn
# Runs as a user in the edgecl group, no sudo. Exits 1 when a step failed; the report shows each failure's
# last lines. While the watch service runs it shares the GPU's memory: on an 8 GB board stop it first.
# Environment: EDGECL (the edgecl program: edgecl), PYTHON (its venv's python).
set -uo pipefail
bundle=${1:-${EDGECL_BUNDLE:-/var/lib/edgecl/bundle}}
images=${2:-}
case $bundle in -h | --help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;; esac
EDGECL=${EDGECL:-edgecl}
die() { echo "check-device.sh: $*" >&2; exit 2; }
program=$(command -v "$EDGECL") || die "$EDGECL is not on PATH (sudo device/install.sh puts it in /usr/local/bin)"
PYTHON=${PYTHON:-$(dirname "$(readlink -f "$program")")/python}
[ -f "$bundle/manifest.json" ] || die "$bundle: no bundle (no manifest.json); give its folder"
[ -z "$images" ] || [ -d "$images" ] || die "$images: no such folder"

work=$(mktemp -d "${TMPDIR:-/tmp}/edgecl-check.XXXXXX") || die "cannot make a temporary folder"
trap 'rm -rf "$work"' EXIT
cp -r "$bundle" "$work/bundle" || die "cannot copy $bundle to $work"
rm -f "$work/bundle/.lock"
described=$images
if [ -z "$images" ]; then  # a class no bundle knows: stripes, a few phases and widths
  images=$work/check-stripes
  described="8 synthetic ($images)"
  "$PYTHON" - "$images" <<'EOF' || die "$PYTHON cannot write images (Pillow, numpy)"
import sys
from pathlib import Path

import numpy as np
from PIL import Image

folder = Path(sys.argv[1])
folder.mkdir()
for n in range(8):
    pixels = np.zeros((240, 320, 3), np.uint8)
    pixels[:, n % 4 :: 4 + n // 4] = (250, 240, 40)
    Image.fromarray(pixels).save(folder / f"stripes-{n}.png")
EOF
fi

report=()
failed=0
line() { report+=("$(printf '%-22s %-7s %7s  %s' "$@")"); }

# step NAME SUMMARY COMMAND...: runs COMMAND, its output in $work/NAME; SUMMARY (a python expression on `out`,
# the output's text) says what it did.
step() {
  local name=$1 summary=$2 start rc=0 seconds detail
  shift 2
  start=$(date +%s%N)
  "$@" >"$work/$name" 2>&1 || rc=$?
  seconds=$(( ($(date +%s%N) - start) / 1000000 ))
  seconds=$(printf '%d.%d' $((seconds / 1000)) $((seconds % 1000 / 100)))
  if [ "$rc" = 0 ]; then
    detail=$("$PYTHON" -c "import json, sys; out = open(sys.argv[1]).read(); print($summary)" "$work/$name" 2>&1)
    line "$name" ok "$seconds" "${detail//$'\n'/ }"
  else
    failed=$((failed + 1))
    line "$name" FAILED "$seconds" "exit $rc:"
    while IFS= read -r text; do report+=("    $text"); done < <(grep -v '^\s*$' "$work/$name" | tail -n 6)
  fi
}

versions=$("$PYTHON" - <<'EOF' 2>&1
import platform

print("python", platform.python_version(), platform.machine())
try:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
    print("torch", torch.__version__, "cuda", torch.version.cuda, "|", gpu)
except Exception as error:  # noqa: BLE001 - the report says what failed
    print("torch", "FAILED:", error)
try:
    import tensorrt

    print("tensorrt", tensorrt.__version__)
except Exception as error:  # noqa: BLE001
    print("tensorrt", "FAILED:", error)
try:
    import onnxruntime

    print("onnxruntime", onnxruntime.__version__, ", ".join(onnxruntime.get_available_providers()))
except Exception as error:  # noqa: BLE001
    print("onnxruntime", "FAILED:", error)
EOF
)
model=$(tr -d '\0' 2>/dev/null </proc/device-tree/model || uname -m)
release=$(head -n 1 /etc/nv_tegra_release 2>/dev/null || echo "no /etc/nv_tegra_release")
service=$(systemctl is-active edgecl-watch.service edgecl-watch.path 2>/dev/null | paste -sd ' ' -)

json=(--json -q)
step info "out and '{runtime} ({runtime_reason}); heads {heads_runtime}'.format(**json.loads(out))" \
  "$EDGECL" info --json -b "$work/bundle"
step "engine build" "out.strip().splitlines()[-1] if out.strip() else ''" \
  "$EDGECL" engine build -b "$work/bundle"
counts="(lambda p: '%d images, %s' % (len(p), sorted({x['label'] for x in p})))(json.loads(out))"
step classify "$counts" "$EDGECL" classify "${json[@]}" -b "$work/bundle" "$images"
for runtime in tensorrt onnxruntime torch; do
  step "classify $runtime" "$counts" "$EDGECL" classify "${json[@]}" --runtime "$runtime" -b "$work/bundle" "$images"
done
learned="'{images} images of {classes}, heads {seconds_heads:.1f} s, runtime {runtime}'.format(**json.loads(out))"
step learn "$learned" "$EDGECL" learn "${json[@]}" --images "$images" -b "$work/bundle"
step "classify after learn" "$counts" "$EDGECL" classify "${json[@]}" -b "$work/bundle" "$images"

echo '```'
echo "edgecl device check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "board     $model | $release"
echo "edgecl    $("$EDGECL" --version 2>&1 | tail -n 1) | $program"
printf '%s\n' "$versions" | sed 's/^/          /'
echo "user      $(id -un), groups $(id -Gn | tr ' ' ','), umask $(umask) | edgecl-watch: ${service:-no systemd}"
echo "bundle    $bundle ($(du -sh "$bundle" 2>/dev/null | cut -f1)), images: $described"
echo "seconds: each whole command, start-up included"
printf '%s\n' "${report[@]}"
echo "$failed failed"
echo '```'
[ "$failed" = 0 ]
