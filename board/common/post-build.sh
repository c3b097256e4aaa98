#!/bin/sh
# Post-build step shared by every board and by both ways of producing the base
# (Buildroot, or the Debian packages of ci/build-qemu-image.sh).
# Usage: post-build.sh TARGET_DIR BOARD   (BOARD: a folder of board/ with a meta file)
# Environment:
#   OT2_VERSION       version string of this image (default: git describe of the tree)
#   OT2_KEYRING_DIR   directory of trusted bundle-signing public keys (*.pem); required
#   SOURCE_DATE_EPOCH build time (default: now)
set -eu

target=$1
tree=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=board/common/meta.sh
. "$(dirname "$0")/meta.sh"
board=$2
load_meta "$board"

version=${OT2_VERSION:-$(git -C "$tree" describe --always --dirty 2>/dev/null || echo dev)}
build_time=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%dT%H:%M:%SZ)

mkdir -p "$target/etc/ot2/keyring"

# The board facts the update server needs (update_server/config.py reads this file, its
# board_file): the board's meta, its slot devices and environment files.
# U-Boot's files are reached through libubootenv configs, one per file (listing both in one
# config would make libubootenv expect the two-copy format, which boot.cmd does not use).
boot_mount=/boot/firmware
{
	echo "# The board facts of this image: board/$board/meta, completed by board/common/post-build.sh."
	grep -v '^#' "$BOARD_DIR/meta"
	echo "SLOT_A_DEVICE=$SLOT_A_DEVICE"
	echo "SLOT_B_DEVICE=$SLOT_B_DEVICE"
	case "$BOOTLOADER" in
	grub)
		echo "GRUBENV_FILES=\"$boot_mount/$BOOT_ENV $boot_mount/$BOOT_ENV_BACKUP\""
		;;
	uboot)
		printf '# libubootenv: %s, primary boot environment file (board/common/post-build.sh)\n%s\t0x0000\t%s\n' \
			"$BOOT_ENV" "$boot_mount/$BOOT_ENV" "$BOOT_ENV_SIZE" > "$target/etc/fw_env.config"
		printf '# libubootenv: %s, backup boot environment file (board/common/post-build.sh)\n%s\t0x0000\t%s\n' \
			"$BOOT_ENV_BACKUP" "$boot_mount/$BOOT_ENV_BACKUP" "$BOOT_ENV_SIZE" > "$target/etc/fw_env.bak.config"
		echo 'FW_ENV_CONFIGS="/etc/fw_env.config /etc/fw_env.bak.config"'
		;;
	esac
} > "$target/etc/ot2/board.conf"

printf '{"version": "%s", "compatible": "%s", "board": "%s", "build_time": "%s"}\n' \
	"$version" "$BOARD_COMPATIBLE" "$board" "$build_time" > "$target/etc/ot2/version.json"

# The file by which the Opentrons engine knows it runs on an OT-2's system (with
# RUNNING_ON_PI, /etc/ot2/environment): it then asks the robot server for the deck
# configuration (Opentrons/opentrons, api/src/opentrons/config/__init__.py, ARCHITECTURE).
printf '{"buildroot_version": "%s", "robot_type": "OT-2 Standard"}\n' "$version" > "$target/etc/VERSION.json"

# An image that trusts no key could never be updated again: refuse to build it.
if [ -z "${OT2_KEYRING_DIR:-}" ] || ! ls "$OT2_KEYRING_DIR"/*.pem >/dev/null 2>&1; then
	echo "post-build.sh: OT2_KEYRING_DIR must name a directory with at least one *.pem key" >&2
	exit 1
fi
rm -f "$target"/etc/ot2/keyring/*.pem
cp "$OT2_KEYRING_DIR"/*.pem "$target/etc/ot2/keyring/"

# System users and groups of sysusers.d (ot2-robot, ot2-run, gpio, ...): the root is
# read-only, so systemd-sysusers cannot add them at boot. The host's systemd-sysusers (the
# build host's, or Buildroot's host-systemd) writes the target's /etc/passwd and /etc/group.
if ! command -v systemd-sysusers >/dev/null; then
	echo "post-build.sh: systemd-sysusers is needed to create the image's system users" >&2
	exit 1
fi
systemd-sysusers --root="$target"

# Mount points of the read-only root; everything written lives in /data or tmpfs.
mkdir -p "$target/data" "$target/boot/firmware" "$target/mnt/usbdrive"
rm -rf "$target/root/.ssh"
ln -s /data/ssh "$target/root/.ssh"
# Empty machine-id: systemd puts a transient one on tmpfs, ot2-persist keeps it in /data.
: > "$target/etc/machine-id"
echo ot2 > "$target/etc/hostname"

# The bootloaders load /boot/vmlinuz and /boot/initrd.img from the slot.
for k in bzImage zImage Image; do
	if [ -e "$target/boot/$k" ] && [ ! -e "$target/boot/vmlinuz" ]; then
		ln -s "$k" "$target/boot/vmlinuz"
	fi
done

# Every Python process gets the robot's environment (/etc/ot2/environment): a .pth file in
# each of Python's site directories puts /usr/lib/ot2/python on the path and imports it.
for site in "$target"/usr/lib/python3*/site-packages "$target"/usr/lib/python3/dist-packages; do
	[ -d "$site" ] || continue
	printf '/usr/lib/ot2/python\nimport ot2_environment\n' > "$site/ot2-environment.pth"
done

# `python` is Python 3 (Debian: python-is-python3; Buildroot: this link).
if [ ! -e "$target/usr/bin/python" ] && [ -e "$target/usr/bin/python3" ]; then
	ln -s python3 "$target/usr/bin/python"
fi

# Enable the units of the overlay (what `systemctl enable` would do, without a running systemd).
wants="$target/etc/systemd/system/multi-user.target.wants"
mkdir -p "$wants"
for unit in ot2-persist.service ot2-provision.service ot2-update-server.service ot2-robot-server.service \
	ot2-boot-check.service ot2-dropbear.service ot2-journal.service \
	ot2-python-packages.service ot2-jupyter.service systemd-networkd.service; do
	ln -sf "/usr/lib/systemd/system/$unit" "$wants/$unit"
done
mkdir -p "$target/etc/systemd/system/sysinit.target.wants"
ln -sf /usr/lib/systemd/system/ot2-grow-data.service \
	"$target/etc/systemd/system/sysinit.target.wants/ot2-grow-data.service"
