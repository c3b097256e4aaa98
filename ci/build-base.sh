#!/bin/bash
# Build the Debian base root filesystem of the QEMU board as a tarball.
# Usage: ci/build-base.sh OUT [PACKAGE_LIST...]
# The packages are those of ci/base-packages.txt and of each further list (same format).
# OUT is written as an uncompressed tar whatever its name (mmdebstrap would otherwise
# guess the format from the name's suffix, and make a directory of `x.tar.tmp`).
# Uses the host's apt sources (Debian packages only), no network beyond them.
set -euo pipefail
out=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
packages=$(cat "$here/base-packages.txt" "$@" | grep -v '^#' | paste -sd, -)

# The initramfs must mount a squashfs root from a virtio disk; MODULES=list keeps it
# small and independent of the build host's hardware. The hooks' "$1" (the root being
# built) is expanded by mmdebstrap's shell, not this one.
# shellcheck disable=SC2016
initramfs_setup='mkdir -p "$1/etc/initramfs-tools/conf.d" &&
  printf "squashfs\nvirtio_pci\nvirtio_blk\next4\n" >> "$1/etc/initramfs-tools/modules" &&
  echo MODULES=list > "$1/etc/initramfs-tools/conf.d/ot2.conf"'

# shellcheck disable=SC2016
mmdebstrap --variant=minbase --format=tar --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --essential-hook="$initramfs_setup" \
  --customize-hook='chroot "$1" apt-get clean' \
  bookworm "$out"
