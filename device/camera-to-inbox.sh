#!/usr/bin/env bash
# Camera frames into the inbox that edgecl-watch classifies, as JPEG files at a low rate:
#   device/camera-to-inbox.sh                                   CSI camera 0, one frame a second
#   device/camera-to-inbox.sh --usb /dev/video0 --rate 2        a USB camera, two frames a second
#   device/camera-to-inbox.sh --rtsp rtsp://cam/stream --rate 1/10 --codec h265   one frame every ten seconds
# Options:
#   --csi N | --usb DEVICE | --rtsp URL   the camera (default: --csi 0)
#   --rate R     frames kept per second, N or N/D (default 1)
#   --size WxH   the CSI camera's capture size, at 30 fps (default 1280x720)
#   --codec C    the RTSP stream's codec, h264 or h265 (default h264)
#   --inbox DIR  where the frames go (default /var/lib/edgecl/inbox)
#   --keep N     at most N of this run's frames in the inbox, the oldest removed first: a bound for when the
#                service is stopped (default 1000; 0: none)
#   --print      print the GStreamer command instead of running it
# Frames are dropped before they leave the GPU (CSI, RTSP: videorate on NVMM buffers, ahead of nvvidconv),
# or, for USB, before they are converted and encoded. The service reads a file once it has not changed
# for half a second, so a frame is never read half-written.
set -euo pipefail
camera=csi
source_arg=0
rate=1
size=1280x720
codec=h264
inbox=/var/lib/edgecl/inbox
keep=1000
print=no

die() { echo "camera-to-inbox.sh: $*" >&2; exit 2; }
value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi; }
while [ $# -gt 0 ]; do
  case $1 in
    --csi | --usb | --rtsp) value "$@"; camera=${1#--}; source_arg=$2; shift ;;
    --rate) value "$@"; rate=$2; shift ;;
    --size) value "$@"; size=$2; shift ;;
    --codec) value "$@"; codec=$2; shift ;;
    --inbox) value "$@"; inbox=$2; shift ;;
    --keep) value "$@"; keep=$2; shift ;;
    --print) print=yes ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

[[ $rate =~ ^[1-9][0-9]*(/[1-9][0-9]*)?$ ]] || die "--rate $rate: give frames per second as N or N/D, e.g. 2 or 1/10"
[[ $rate == */* ]] || rate=$rate/1
[[ $size =~ ^([1-9][0-9]*)x([1-9][0-9]*)$ ]] || die "--size $size: give WIDTHxHEIGHT, e.g. 1280x720"
width=${BASH_REMATCH[1]} height=${BASH_REMATCH[2]}
[[ $keep =~ ^[0-9]+$ ]] || die "--keep $keep: give a number of frames (0: no bound)"
[[ $inbox != *[[:space:]]* ]] || die "--inbox $inbox: GStreamer splits a path with spaces"

keep_rate=(videorate drop-only=true)
case $camera in
  csi)
    [[ $source_arg =~ ^[0-9]+$ ]] || die "--csi $source_arg: give the sensor number, e.g. 0"
    pipeline=(nvarguscamerasrc sensor-id="$source_arg"
      ! "video/x-raw(memory:NVMM),width=$width,height=$height,framerate=30/1"
      ! "${keep_rate[@]}" ! "video/x-raw(memory:NVMM),framerate=$rate" ! nvvidconv ! "video/x-raw,format=I420") ;;
  rtsp)
    case $codec in h264 | h265) ;; *) die "--codec $codec: give h264 or h265" ;; esac
    pipeline=(rtspsrc location="$source_arg" latency=200 ! "rtp${codec}depay" ! "${codec}parse" ! nvv4l2decoder
      ! "${keep_rate[@]}" ! "video/x-raw(memory:NVMM),framerate=$rate" ! nvvidconv ! "video/x-raw,format=I420") ;;
  usb)
    pipeline=(v4l2src device="$source_arg" ! "${keep_rate[@]}" ! "video/x-raw,framerate=$rate" ! videoconvert) ;;
esac
# One name per run, so a restart never overwrites frames the service has not read yet.
pipeline+=(! jpegenc ! multifilesink location="$inbox/$camera-$(date +%Y%m%d-%H%M%S)-%06d.jpg" max-files="$keep")

if [ "$print" = yes ]; then
  for word in gst-launch-1.0 -e "${pipeline[@]}"; do   # quoted where a shell would read it otherwise
    if [[ $word =~ ^[A-Za-z0-9_./=:,@%+!-]+$ ]]; then
      printf '%s ' "$word"
    else
      printf "'%s' " "${word//\'/\'\\\'\'}"
    fi
  done
  echo
  exit 0
fi
mkdir -p "$inbox"
exec gst-launch-1.0 -e "${pipeline[@]}"
