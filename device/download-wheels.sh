#!/usr/bin/env bash
# For a Jetson without internet: fetch every wheel install.sh needs, for JetPack 6 (Python 3.10, aarch64),
# on any machine that has internet, then copy the folder to the device and install from it:
#   device/download-wheels.sh wheels/                 # here, into an empty folder
#   sudo WHEELS=wheels/ device/install.sh             # on the Jetson
# Environment: JETSON_INDEX (as install.sh), PYTHON (python3, any version: it only downloads).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
JETSON_INDEX=${JETSON_INDEX:-https://pypi.jetson-ai-lab.io/jp6/cu126}
PYTHON=${PYTHON:-python3}
dest=${1:?usage: download-wheels.sh FOLDER}

# JetPack 6's Python, whatever runs this script; the device's glibc is 2.35 (Ubuntu 22.04), so every
# manylinux tag up to manylinux_2_35 runs there (pip does not expand one --platform into the older ones).
target=(--only-binary=:all: --implementation cp --python-version 3.10 --abi cp310 --platform linux_aarch64
  --platform manylinux2014_aarch64)
for glibc in $(seq 17 35); do
  target+=(--platform "manylinux_2_${glibc}_aarch64")
done
pip=("$PYTHON" -m pip --disable-pip-version-check)

mkdir -p "$dest"
"${pip[@]}" download --dest "$dest" "${target[@]}" --index-url "$JETSON_INDEX" --no-deps \
  -r "$here/requirements-jetson-index.txt"
shopt -s nullglob
jetson=("$dest"/torch-*.whl "$dest"/onnxruntime_gpu-*.whl)
if [ "${#jetson[@]}" != 2 ]; then
  echo "download-wheels.sh: $dest must hold one torch and one onnxruntime-gpu wheel, not: ${jetson[*]}" >&2
  exit 1
fi
# The rest from PyPI, with the dependencies of those two: given as files, PyPI's own torch never stands in for them.
"${pip[@]}" download --dest "$dest" "${target[@]}" -r "$here/requirements-jetpack6.txt" "${jetson[@]}"
"${pip[@]}" wheel --no-deps --wheel-dir "$dest" "$(dirname "$here")"   # edgecl itself, pure Python
count=$(find "$dest" -maxdepth 1 -name '*.whl' | wc -l)
echo "download-wheels.sh: $count wheels in $dest; on the Jetson: sudo WHEELS=$dest device/install.sh" >&2
