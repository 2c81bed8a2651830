#!/usr/bin/env bash
# Make a local base image for the Dockerfile when no container registry is reachable:
# debootstrap Debian bookworm (python3, python3-venv and the runtime libraries included) from
# the Debian mirror apt already uses, then `podman import` it.
#
#   deploy/images/base-image.sh [IMAGE]      (default localhost/ttc-base:bookworm)
#
# Then build with `--build-arg BASE=localhost/ttc-base:bookworm`. Needs root, debootstrap and
# podman (apt-get install debootstrap podman runc). Skips the work when IMAGE already exists.
set -euo pipefail
image="${1:-localhost/ttc-base:bookworm}"
if podman image exists "$image"; then
  echo "base image $image exists"
  exit 0
fi
# The mirror apt is configured with (deb822 .sources or a one-line sources.list).
mirror="${DEBIAN_MIRROR:-$(grep -h -m1 -oP '^URIs:\s*\K\S+' /etc/apt/sources.list.d/*.sources \
  2>/dev/null || grep -h -m1 -oP '^deb\s+(\[[^]]*\]\s+)?\K\S+' /etc/apt/sources.list)}"
mirror="${mirror%% *}"
rootfs="$(mktemp -d /var/tmp/ttc-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
# python3 and python3-venv for the gateway's virtual environment; libgomp1 for llama.cpp
# (the local image); ca-certificates for https upstreams; passwd for useradd.
debootstrap --variant=minbase \
  --include=python3,python3-venv,libgomp1,ca-certificates,passwd \
  bookworm "$rootfs" "$mirror"
# Smaller: no package lists, caches, docs or man pages in the image.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*
tar -C "$rootfs" -c . | podman import \
  --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$image"
echo "base image $image made from $mirror"
