#!/bin/sh
# The container's health check (Dockerfile): unhealthy when the volume lacks its layout or a bundle, or when
# more than BACKLOG images (50) have waited over two minutes in the inbox, i.e. the watch is stuck.
# Unreadable images stay in the inbox and count too: more than BACKLOG of them also needs a look.
# Environment: EDGECL_DATA (/var/lib/edgecl), BACKLOG.
set -eu
data=${EDGECL_DATA:-/var/lib/edgecl}
backlog=${BACKLOG:-50}
for folder in bundle inbox "done" log; do
  [ -d "$data/$folder" ] || { echo "no $data/$folder"; exit 1; }
done
[ -s "$data/bundle/manifest.json" ] || { echo "no bundle in $data/bundle (copy one there)"; exit 1; }
waiting=$(find "$data/inbox" -maxdepth 1 -type f ! -name '.*' -mmin +2 | head -n $((backlog + 1)) | wc -l)
[ "$waiting" -le "$backlog" ] || { echo "over $backlog images waiting in $data/inbox for over two minutes"; exit 1; }
echo "ok: $waiting images waiting"
