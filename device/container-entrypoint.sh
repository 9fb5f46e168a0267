#!/bin/sh
# The container's entry point (Dockerfile): the volume's layout made where it is missing, then the edgecl
# command given, the watch service by default. Files it makes stay group-writable, as the host service's do.
# `watch` waits for a bundle's manifest first, as the host's edgecl-watch.path does, rather than failing
# into a restart loop until one is copied in.
# Environment: EDGECL_DATA (/var/lib/edgecl, the volume), EDGECL_BUNDLE, EDGECL (the edgecl program).
set -eu
data=${EDGECL_DATA:-/var/lib/edgecl}
bundle=${EDGECL_BUNDLE:-$data/bundle}
umask 0002
mkdir -p "$data/bundle" "$data/inbox" "$data/done" "$data/log" "$data/cache"
if [ "${1:-}" = watch ] && [ ! -s "$bundle/manifest.json" ]; then
  echo "waiting for a bundle: copy one into $bundle" >&2
  until [ -s "$bundle/manifest.json" ]; do sleep 1; done
fi
exec "${EDGECL:-/opt/edgecl/venv/bin/edgecl}" "$@"
