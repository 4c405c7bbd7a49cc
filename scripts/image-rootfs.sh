#!/usr/bin/env bash
# `make image-rootfs`: the image's content as a directory (default .build/image-rootfs), for
# machines without a container builder — a minimal Debian bookworm (debootstrap
# --variant=minbase) with the runtime libraries of deploy/image/runtime-packages, the
# release `loupe` (built with --static-swift-stdlib) at /usr/local/bin/loupe and the BPF
# objects in /usr/lib/loupe/bpf/: the same files deploy/image/Containerfile puts in the image.
# The tests run the agent from it with chroot in the lab's node netns.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOTFS=${IMAGE_ROOTFS:-.build/image-rootfs}
BINARY=${IMAGE_BINARY:-.build/image/loupe}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=$(grep -v '^#' deploy/image/runtime-packages | xargs | tr ' ' ',')
for f in "$BINARY" bpf/.output/tc_from_pod.bpf.o bpf/.output/splice.bpf.o; do
  [[ -f "$f" ]] || { echo "image-rootfs: $f missing (make image-binary bpf)" >&2; exit 1; }
done
# The base is made once per package list; the Loupe files are replaced on every run.
stamp="$ROOTFS/.loupe-base"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$packages" ]]; then
  rm -rf "$ROOTFS"
  mkdir -p "$(dirname "$ROOTFS")"
  echo "image-rootfs: debootstrap --variant=minbase bookworm ($packages) into $ROOTFS"
  debootstrap --variant=minbase --include="$packages" bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.debootstrap.log" 2>&1 || {
    tail -20 "$ROOTFS.debootstrap.log" >&2; exit 1; }
  # What a runtime image does not need: package caches and lists, documentation, locales.
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
         "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
  echo "$packages" >"$stamp"
fi
install -D -m 0755 "$BINARY" "$ROOTFS/usr/local/bin/loupe"
install -D -m 0644 bpf/.output/tc_from_pod.bpf.o "$ROOTFS/usr/lib/loupe/bpf/tc_from_pod.bpf.o"
install -D -m 0644 bpf/.output/splice.bpf.o "$ROOTFS/usr/lib/loupe/bpf/splice.bpf.o"
# Every library the binary needs resolves inside the rootfs.
missing=$(chroot "$ROOTFS" /usr/bin/ldd /usr/local/bin/loupe | grep 'not found' || true)
[[ -z "$missing" ]] || { echo "image-rootfs: unresolved libraries: $missing" >&2; exit 1; }
# It runs (with /proc, as every container has: the Swift runtime reads it).
unshare -m sh -c 'mount -t proc proc "$0/proc" && exec chroot "$0" /usr/local/bin/loupe --version' "$ROOTFS" >/dev/null
echo "image-rootfs: $ROOTFS $(du -sm --exclude=proc --exclude=sys --exclude=dev "$ROOTFS" | cut -f1) MiB (loupe $(du -m "$ROOTFS/usr/local/bin/loupe" | cut -f1) MiB)"
