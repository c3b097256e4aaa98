#!/bin/bash
# Offline build of the QEMU board's image from Debian packages: the Debian base root
# (ci/build-base.sh), then the same overlay, post-build and post-image scripts as the
# Buildroot build, the two Python projects, squashfs, genimage, and a signed bundle.
#
# Usage: ci/build-qemu-image.sh [--version V] [--fault robot-server] [--no-jupyter] [--out DIR]
# --no-jupyter (or OT2_JUPYTER=0) leaves Jupyter (ci/jupyter-packages.txt) out of the image.
# Prints the output directory (holding disk.img, rootfs.squashfs, rootfs.bundle) on its
# last line. Results are cached in $OT2_CACHE (default ~/.cache/ot2) keyed by a hash of
# every input, so a second run with the same inputs takes a second.
set -euo pipefail

tree=$(cd "$(dirname "$0")/.." && pwd)
# The board's facts (BOARD_COMPATIBLE, IMAGE_NAME, ...).
# shellcheck source=/dev/null
. "$tree/board/qemu/meta"
cache=${OT2_CACHE:-$HOME/.cache/ot2}
venv=${OT2_VENV:-$tree/.venv}
version=$(git -C "$tree" describe --always --dirty 2>/dev/null || echo dev)
fault=""
out=""
jupyter=${OT2_JUPYTER:-1}
while [ $# -gt 0 ]; do
	case "$1" in
	--version) version=$2; shift 2 ;;
	--fault) fault=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--no-jupyter) jupyter=0; shift ;;
	*) echo "usage: $0 [--version V] [--fault robot-server] [--no-jupyter] [--out DIR]" >&2; exit 2 ;;
	esac
done
mkdir -p "$cache"
began=$(date +%s)
log() { echo "[build-qemu-image +$(( $(date +%s) - began ))s] $*" >&2; }
# One build at a time per cache. Every artifact is made under a temporary name and
# renamed into place when complete, so what an interrupted build left (*.tmp, work.*)
# is never taken for a result; holding the lock, this build clears it away.
exec 9>"$cache/.build.lock"
flock 9
rm -rf "$cache"/*.tmp "$cache"/work.*
# Cold build times, one line per artifact built (CI prints this file).
timed() { echo "$1: $(( $(date +%s) - $2 )) s" | tee -a "$cache/build-times.log" >&2; }
# Prints where the result is: the cache entry, or a sparse copy of it in --out.
deliver() {
	if [ -n "$out" ]; then
		mkdir -p "$out"
		cp --sparse=always "$result"/* "$out/"
		result=$out
	fi
	echo "$result"
}

# The development signing key: made once per machine, kept outside the repository.
keys=$cache/keys
if [ ! -s "$keys/dev.key" ]; then
	rm -rf "$keys.tmp"
	mkdir -p "$keys.tmp/keyring"
	"$venv/bin/update-server" bundle keygen --out "$keys.tmp/dev.key"
	cp "$keys.tmp/dev.pem" "$keys.tmp/keyring/dev.pem"
	rm -rf "$keys"
	mv "$keys.tmp" "$keys"
fi

hash_of() { sha256sum | cut -c1-16; }
extra_packages=()
if [ "$jupyter" = 1 ]; then
	extra_packages=("$tree/ci/jupyter-packages.txt")
fi
base_key=$(cat "$tree/ci/base-packages.txt" "${extra_packages[@]}" "$tree/ci/build-base.sh" | hash_of)
base=$cache/base-$base_key.tar
if [ ! -s "$base" ]; then
	log "building the Debian base root ($base)"
	start=$(date +%s)
	"$tree/ci/build-base.sh" "$base.tmp" "${extra_packages[@]}"
	tar -tf "$base.tmp" ./usr/bin/python3 >/dev/null
	mv "$base.tmp" "$base"
	timed "Debian base root $(du -h "$base" | cut -f1)" "$start"
fi

# The engine and its dependencies as wheels for the image's Python (3.11, x86_64, glibc 2.36).
wheels_key=$(hash_of < "$tree/ci/image-requirements.txt")
wheels=$cache/wheels-$wheels_key
if [ ! -e "$wheels/.complete" ]; then
	log "downloading the image's Python wheels ($wheels)"
	start=$(date +%s)
	"$venv/bin/pip" download --quiet --disable-pip-version-check --only-binary :all: --no-deps \
		--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --python-version 3.11 \
		--implementation cp -r "$tree/ci/image-requirements.txt" -d "$wheels.tmp"
	touch "$wheels.tmp/.complete"
	rm -rf "$wheels"
	mv "$wheels.tmp" "$wheels"
	timed "image wheels $(du -sh "$wheels" | cut -f1)" "$start"
fi

# The root filesystem before its version is stamped: shared by every image of this tree.
root_key=$( (
	echo "$base_key $wheels_key"
	cd "$tree" && tar c --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
		--exclude=__pycache__ --exclude='*.egg-info' --exclude=tests --exclude=bench \
		ci/build-qemu-image.sh ci/make-grub-efi.sh ci/image-requirements.txt board/common board/qemu overlay \
		update_server/pyproject.toml update_server/update_server \
		robot_server/pyproject.toml robot_server/robot_server
) | hash_of)
rootfs=$cache/root-$root_key.tar
image_key=$( (echo "$root_key $version $fault"; cat "$keys/dev.pem") | hash_of)
result=$cache/image-$image_key
if [ -s "$result/$IMAGE_NAME" ]; then
	log "cached: $result"
	deliver
	exit 0
fi

work=$(mktemp -d "$cache/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
binaries=$work/images
mkdir -p "$root" "$binaries/efi-part/EFI/BOOT"

# The root filesystem: the base with only the kernel modules a virtio machine needs, the
# overlays, both projects and the engine, compiled; kept in the cache as a tar.
assemble_root() {
	start=$(date +%s)
	log "unpacking the base"
	tar -C "$root" -xf "$base"

	# Only the kernel modules a virtio machine needs (and their dependencies) stay, and
	# those of lab equipment on USB: the host controllers QEMU emulates (xhci, ehci), USB
	# drives (usb-storage, uas, sd_mod; FAT, exFAT, ext4) and serial adapters (FTDI, CP210x,
	# PL2303, CDC-ACM).
	kver=$(ls "$root/usr/lib/modules")
	keep=$work/modules.keep
	for m in virtio_blk virtio_pci virtio_net virtio_console virtio_rng squashfs ext4 vfat \
		nls_cp437 nls_ascii nls_iso8859-1 nls_utf8 autofs4 binfmt_misc loop af_packet ipv6 crc32c_generic \
		xhci_pci ehci_pci uhci_hcd usb_storage uas sd_mod exfat \
		usbserial ftdi_sio cp210x pl2303 cdc_acm; do
		chroot "$root" modprobe -S "$kver" --show-depends "$m" 2>/dev/null |
			awk '/^insmod/ {sub(".*/modules/[^/]*/", "", $2); print $2}'
	done | sort -u > "$keep"
	(cd "$root/usr/lib/modules/$kver" && find kernel -name '*.ko*') | while read -r ko; do
		grep -qxF "$ko" "$keep" || rm -f "$root/usr/lib/modules/$kver/$ko"
	done
	chroot "$root" depmod "$kver"
	ln -sf "vmlinuz-$kver" "$root/boot/vmlinuz"
	ln -sf "initrd.img-$kver" "$root/boot/initrd.img"
	rm -f "$root/boot/System.map-$kver"

	log "installing the overlays and the Python projects"
	cp -a "$tree/overlay/." "$root/"
	cp -a "$tree/board/qemu/rootfs-overlay/." "$root/"
	"$venv/bin/pip" install --quiet --no-deps --no-compile \
		--target "$root/usr/lib/python3/dist-packages" "$tree/update_server" "$tree/robot_server"
	rm -rf "$root/usr/lib/python3/dist-packages/bin"
	# The engine goes where Debian's Python looks for locally installed packages; its
	# commands (opentrons_execute, opentrons_simulate) to /usr/local/bin for that Python.
	site=/usr/local/lib/python3.11/dist-packages
	"$venv/bin/pip" install --quiet --disable-pip-version-check --no-index --find-links "$wheels" --no-deps \
		--no-compile --target "$root$site" -r "$tree/ci/image-requirements.txt"
	mkdir -p "$root/usr/local/bin"
	for script in "$root$site"/bin/*; do
		sed '1s|^#!.*|#!/usr/bin/python3|' "$script" > "$root/usr/local/bin/${script##*/}"
		chmod 755 "$root/usr/local/bin/${script##*/}"
	done
	rm -rf "${root:?}$site/bin"
	# Bytecode made by the host's Python 3.11 (one bytecode format for all of 3.11), with the
	# guest's paths.
	"$venv/bin/python" -m compileall -q -j 0 -s "$root" -p / "$root/usr/lib/python3/dist-packages/update_server" \
		"$root/usr/lib/python3/dist-packages/robot_server" "$root$site"
	tar -C "$root" --numeric-owner -cf "$rootfs.tmp" .
	mv "$rootfs.tmp" "$rootfs"
	timed "root filesystem $(du -h "$rootfs" | cut -f1)" "$start"
	rm -rf "$root"
	mkdir "$root"
}
if [ ! -s "$rootfs" ]; then
	assemble_root
fi

start=$(date +%s)
log "unpacking the root filesystem"
tar -C "$root" --numeric-owner -xf "$rootfs"
OT2_VERSION=$version OT2_KEYRING_DIR=$keys/keyring "$tree/board/common/post-build.sh" "$root" qemu

# Fault injection for the end-to-end rollback test: an image whose robot server never starts.
# Its boot check gives up after 30 s instead of 90: the outcome is the same, three times sooner.
if [ "$fault" = robot-server ]; then
	mkdir -p "$root/etc/systemd/system/ot2-robot-server.service.d"
	printf '[Service]\nExecStart=\nExecStart=/bin/false\n' \
		> "$root/etc/systemd/system/ot2-robot-server.service.d/fault.conf"
	sed -i 's/^boot_check_timeout = .*/boot_check_timeout = 30/' "$root/etc/ot2/update-server.toml"
	grep -qx 'boot_check_timeout = 30' "$root/etc/ot2/update-server.toml"
fi

log "making the squashfs"
mksquashfs "$root" "$binaries/rootfs.squashfs" -comp gzip -noappend -no-progress -quiet

log "making the GRUB EFI binary"
"$tree/ci/make-grub-efi.sh" "$binaries/efi-part/EFI/BOOT/bootx64.efi"

log "assembling the disk image"
"$tree/board/common/post-image.sh" "$binaries" qemu

log "signing the bundle"
"$venv/bin/update-server" bundle create --key "$keys/dev.key" --compatible "$BOARD_COMPATIBLE" \
	--version "$version" --image "rootfs=$binaries/rootfs.squashfs" -o "$binaries/rootfs.bundle"

rm -rf "$result.tmp"
mkdir -p "$result.tmp"
cp --sparse=always "$binaries/$IMAGE_NAME" "$binaries/$IMAGE_NAME.bmap" "$binaries/$IMAGE_NAME.sha256" "$binaries/rootfs.squashfs" "$binaries/rootfs.bundle" "$result.tmp/"
rm -rf "$result"
mv "$result.tmp" "$result"
sizes="$IMAGE_NAME $(du -h --apparent-size "$result/$IMAGE_NAME" | cut -f1), rootfs.squashfs $(du -m "$result/rootfs.squashfs" | cut -f1) MiB"
timed "image $version${fault:+ (fault $fault)}: $sizes" "$start"
deliver
