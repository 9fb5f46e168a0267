#!/bin/sh
# The container's entry point (Dockerfile): the volume's layout made where it is missing, then the edgecl
# command given, the watch service by default. Files it makes stay group-writable, as the host service's do.
# Environment: EDGECL_DATA (/var/lib/edgecl, the volume), EDGECL (the edgecl program).
set -eu
data=${EDGECL_DATA:-/var/lib/edgecl}
umask 0002
mkdir -p "$data/bundle" "$data/inbox" "$data/done" "$data/log" "$data/cache"
exec "${EDGECL:-/opt/edgecl/venv/bin/edgecl}" "$@"
