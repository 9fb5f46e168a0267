#!/usr/bin/env bash
# Camera frames into the watched folder, one JPEG per 1/FPS seconds (GStreamer, part of JetPack):
#   device/camera-to-inbox.sh            # CSI camera 0 (nvarguscamerasrc)
#   device/camera-to-inbox.sh --usb      # /dev/video0 (v4l2src)
# Environment: INBOX (/var/lib/edgecl/inbox), FPS (1). `edgecl watch` waits until a file has not
# changed for half a second before reading it, so frames are never read half-written.
set -euo pipefail
INBOX=${INBOX:-/var/lib/edgecl/inbox}
FPS=${FPS:-1}
mkdir -p "$INBOX"
sink="videorate ! video/x-raw,framerate=${FPS}/1 ! jpegenc ! multifilesink location=$INBOX/frame-%06d.jpg"
if [ "${1:-}" = "--usb" ]; then
  exec gst-launch-1.0 -e v4l2src device="${DEVICE:-/dev/video0}" ! videoconvert ! $sink
fi
exec gst-launch-1.0 -e nvarguscamerasrc sensor-id="${SENSOR:-0}" \
  ! 'video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1' ! nvvidconv ! video/x-raw ! $sink
