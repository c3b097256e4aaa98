#!/bin/bash
# Build the Debian base root filesystem of a board as a tarball.
# Usage: ci/build-base.sh OUT [ARCH [PACKAGE_LIST...]]
# ARCH: amd64, the QEMU board, default; arm64, the Pi 3. The packages are those of
# ci/base-packages.txt, ci/base-packages-ARCH.txt and of each further list (same format).
# OUT is written as an uncompressed tar whatever its name (mmdebstrap would otherwise
# guess the format from the name's suffix, and make a directory of `x.tar.tmp`).
# A foreign ARCH runs its maintainer scripts under qemu-user-static (binfmt, ci/install-deps.sh).
# Uses the host's apt sources (Debian packages only), no network beyond them.
set -euo pipefail
out=$1
arch=${2:-amd64}
shift $(( $# > 1 ? 2 : 1 ))
here=$(cd "$(dirname "$0")" && pwd)
packages=$(cat "$here/base-packages.txt" "$here/base-packages-$arch.txt" "$@" | grep -v '^#' | paste -sd, -)

# The modules the initramfs needs to mount the squashfs root slot: from a virtio disk, or
# from the Pi's SD card (bcm2835: the sdhost controller, sdhci-iproc: the other one).
case "$arch" in
amd64) modules="squashfs virtio_pci virtio_blk ext4" ;;
arm64) modules="squashfs bcm2835 sdhci-iproc" ;;
*) echo "build-base.sh: unknown architecture '$arch'" >&2; exit 2 ;;
esac
# MODULES=list keeps the initramfs small and independent of the build host's hardware;
# in place before the kernel is configured, so that its initramfs is made once, small
# (Debian's default MODULES=most takes ~10 min per run under qemu-user). The hooks' "$1"
# (the root being built) is expanded by mmdebstrap's shell, not this one.
# shellcheck disable=SC2016
initramfs_setup='mkdir -p "$1/etc/initramfs-tools/conf.d" &&
  printf "%s\n" '"$modules"' >> "$1/etc/initramfs-tools/modules" &&
  echo MODULES=list > "$1/etc/initramfs-tools/conf.d/ot2.conf"'

# shellcheck disable=SC2016
mmdebstrap --variant=minbase --format=tar --architectures="$arch" --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --essential-hook="$initramfs_setup" \
  --customize-hook='chroot "$1" apt-get clean' \
  bookworm "$out"
