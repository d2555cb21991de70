#!/usr/bin/env bash
# Installs what a fresh machine lacks: Xvfb + Qt's xcb libraries and Orthanc with its DICOMweb
# plugin (apt; the tests start their own Orthanc, so the Debian service is stopped and disabled),
# then the CPU build of torch (pinned first, so nothing pulls a CUDA build), then this package
# with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PKGS="xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libegl1 libdbus-1-3 \
libgl1 libglib2.0-0 libfontconfig1 orthanc orthanc-dicomweb"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  # the package starts and enables its service where systemd runs: tests/orthanc_server.py starts
  # its own process on a free port with temporary storage instead
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    $SUDO service orthanc stop >/dev/null 2>&1 || true
  fi
fi
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e ".[test]"
