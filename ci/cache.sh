# shellcheck shell=bash
# shellcheck disable=SC2154 # tree (set by the sourcing build), rootfs and result (set between the calls)
# Shared parts of the offline image builds (ci/build-qemu-image.sh, ci/build-pi-image.sh),
# sourced by them after setting `tree` (the repository), then `begin_build NAME BOARD ARG...`.
#
# Results are cached in $cache keyed by a hash of their inputs. One build at a time per
# cache. Every artifact is made under a temporary name and renamed into place when
# complete, so what an interrupted build left (*.tmp, work.*) is never taken for a
# result; holding the lock, a build clears it away.

# begin_build NAME BOARD ARG...: the build's settings (cache, venv, options), the board's
# facts (board/BOARD/meta: BOARD_COMPATIBLE, IMAGE_NAME, ...), its log lines
# ("[NAME +Ns] ..."), the cache lock and the signing key.
begin_build() {
	build_name=$1
	board=$2
	shift 2
	# shellcheck source=/dev/null
	. "$tree/board/$board/meta"
	cache=${OT2_CACHE:-$HOME/.cache/ot2}
	venv=${OT2_VENV:-$tree/.venv}
	began=$(date +%s)
	image_args "$@"
	cache_lock
	ensure_keys
}

log() { echo "[$build_name +$(( $(date +%s) - began ))s] $*" >&2; }

# image_args ARG...: the options of both image builds -> $version, $fault, $out, $jupyter.
# --no-jupyter (or OT2_JUPYTER=0) leaves Jupyter (ci/jupyter-packages.txt) out of the image.
image_args() {
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
}

cache_lock() {
	mkdir -p "$cache"
	exec 9>"$cache/.build.lock"
	flock 9
	rm -rf "$cache"/*.tmp "$cache"/work.*
}

# Cold build times, one line per artifact built (CI prints this file).
timed() { echo "$1: $(( $(date +%s) - $2 )) s" | tee -a "$cache/build-times.log" >&2; }

hash_of() { sha256sum | cut -c1-16; }

# Prints where the result ($result) is: the cache entry, or a sparse copy of it in $out.
deliver() {
	if [ -n "$out" ]; then
		mkdir -p "$out"
		cp --sparse=always "$result"/* "$out/"
		result=$out
	fi
	echo "$result"
}

# cached: when $result holds the board's disk image, prints where it is and succeeds.
cached() {
	[ -s "$result/$IMAGE_NAME" ] || return 1
	log "cached: $result"
	deliver
}

# start_work: a fresh work directory in the cache, removed on exit: $work, with $root (the
# root filesystem) and $binaries (what the disk image is assembled from).
start_work() {
	work=$(mktemp -d "$cache/work.XXXXXX")
	trap 'rm -rf "$work"' EXIT
	root=$work/root
	binaries=$work/images
	mkdir -p "$root" "$binaries"
}

# The development signing key ($keys/dev.key, its certificate dev.crt, keyring/dev.pem):
# made once per machine, kept outside the repository. A cache from before bundles were
# SWUpdate's (an Ed25519 key, no certificate) gets a new key.
ensure_keys() {
	keys=$cache/keys
	if [ ! -s "$keys/dev.crt" ]; then
		rm -rf "$keys.tmp"
		mkdir -p "$keys.tmp/keyring"
		"$venv/bin/update-server" bundle keygen --out "$keys.tmp/dev.key"
		cp "$keys.tmp/dev.pem" "$keys.tmp/keyring/dev.pem"
		rm -rf "$keys"
		mv "$keys.tmp" "$keys"
	fi
}

# ensure_base ARCH: the Debian base root of ARCH (ci/build-base.sh), with Jupyter unless
# --no-jupyter -> $base, $base_key.
ensure_base() {
	local extra=()
	[ "$jupyter" = 1 ] && extra=("$tree/ci/jupyter-packages.txt")
	base_key=$(cat "$tree/ci/base-packages.txt" "$tree/ci/base-packages-$1.txt" "${extra[@]}" "$tree/ci/build-base.sh" | hash_of)
	base=$cache/base-$1-$base_key.tar
	if [ ! -s "$base" ]; then
		log "building the Debian $1 base root ($base)"
		local start
		start=$(date +%s)
		"$tree/ci/build-base.sh" "$base.tmp" "$1" "${extra[@]}"
		tar -tf "$base.tmp" ./usr/bin/python3 >/dev/null
		mv "$base.tmp" "$base"
		timed "Debian $1 base root $(du -h "$base" | cut -f1)" "$start"
	fi
}

# ensure_wheels MACHINE: the engine and its dependencies (ci/image-requirements.txt) as
# wheels for the image's Python (3.11, glibc 2.36) on MACHINE (x86_64, aarch64)
# -> $wheels, $wheels_key.
ensure_wheels() {
	wheels_machine=$1
	wheels_key=$( (echo "$1"; cat "$tree/ci/image-requirements.txt") | hash_of)
	wheels=$cache/wheels-$1-$wheels_key
	if [ ! -e "$wheels/.complete" ]; then
		log "downloading the image's Python wheels for $1 ($wheels)"
		local start
		start=$(date +%s)
		"$venv/bin/pip" download --quiet --disable-pip-version-check --only-binary :all: --no-deps \
			--platform "manylinux2014_$1" --platform "manylinux_2_28_$1" --python-version 3.11 \
			--implementation cp -r "$tree/ci/image-requirements.txt" -d "$wheels.tmp"
		touch "$wheels.tmp/.complete"
		rm -rf "$wheels"
		mv "$wheels.tmp" "$wheels"
		timed "image wheels $1 $(du -sh "$wheels" | cut -f1)" "$start"
	fi
}

# prune_modules ROOT MODULE...: keeps only the named kernel modules and what they depend on.
prune_modules() {
	local root=$1 kver keep
	shift
	kver=$(ls "$root/usr/lib/modules")
	keep=$(mktemp)
	for m in "$@"; do
		chroot "$root" modprobe -S "$kver" --show-depends "$m" 2>/dev/null |
			awk '/^insmod/ {sub(".*/modules/[^/]*/", "", $2); print $2}'
	done | sort -u > "$keep"
	(cd "$root/usr/lib/modules/$kver" && find kernel -name '*.ko*') | while read -r ko; do
		grep -qxF "$ko" "$keep" || rm -f "$root/usr/lib/modules/$kver/$ko"
	done
	rm -f "$keep"
	chroot "$root" depmod "$kver"
	ln -sf "vmlinuz-$kver" "$root/boot/vmlinuz"
	ln -sf "initrd.img-$kver" "$root/boot/initrd.img"
	rm -f "$root/boot/System.map-$kver"
}

# install_projects ROOT: the overlays (common and the board's), both Python projects and
# the engine (from $wheels, for $wheels_machine), compiled.
install_projects() {
	local root=$1 site=/usr/local/lib/python3.11/dist-packages script
	cp -a "$tree/overlay/." "$root/"
	cp -a "$tree/board/$board/rootfs-overlay/." "$root/"
	"$venv/bin/pip" install --quiet --no-deps --no-compile \
		--target "$root/usr/lib/python3/dist-packages" "$tree/update_server" "$tree/robot_server"
	rm -rf "$root/usr/lib/python3/dist-packages/bin"
	# The engine goes where Debian's Python looks for locally installed packages; its
	# commands (opentrons_execute, opentrons_simulate) to /usr/local/bin for that Python.
	"$venv/bin/pip" install --quiet --disable-pip-version-check --no-index --find-links "$wheels" --no-deps \
		--only-binary :all: --platform "manylinux2014_$wheels_machine" --platform "manylinux_2_28_$wheels_machine" \
		--python-version 3.11 --implementation cp --no-compile --target "$root$site" -r "$tree/ci/image-requirements.txt"
	mkdir -p "$root/usr/local/bin"
	for script in "$root$site"/bin/*; do
		sed '1s|^#!.*|#!/usr/bin/python3|' "$script" > "$root/usr/local/bin/${script##*/}"
		chmod 755 "$root/usr/local/bin/${script##*/}"
	done
	rm -rf "${root:?}$site/bin"
	# Bytecode made by the host's Python 3.11 (one bytecode format for all of 3.11 and every
	# machine), with the guest's paths.
	"$venv/bin/python" -m compileall -q -j 0 -s "$root" -p / "$root/usr/lib/python3/dist-packages/update_server" \
		"$root/usr/lib/python3/dist-packages/robot_server" "$root$site"
}

# project_sources: a tar stream of the sources every image's root depends on, plus any
# further paths given (hashed into the root's cache key).
project_sources() {
	(cd "$tree" && tar c --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
		--exclude=__pycache__ --exclude='*.egg-info' --exclude=tests --exclude=bench \
		ci/cache.sh ci/image-requirements.txt board/common overlay \
		update_server/pyproject.toml update_server/update_server \
		robot_server/pyproject.toml robot_server/robot_server "$@")
}

# ensure_root MODULE...: the root filesystem ($rootfs, a tar in the cache) of the board
# before its version is stamped, made in $root from $base: only the named kernel modules
# and their dependencies, the overlays, both projects and the engine, compiled.
ensure_root() {
	local start
	[ -s "$rootfs" ] && return
	start=$(date +%s)
	log "unpacking the base"
	tar -C "$root" -xf "$base"
	prune_modules "$root" "$@"
	log "installing the overlays and the Python projects"
	install_projects "$root"
	tar -C "$root" --numeric-owner -cf "$rootfs.tmp" .
	mv "$rootfs.tmp" "$rootfs"
	timed "root filesystem $board $(du -h "$rootfs" | cut -f1)" "$start"
	rm -rf "$root"
	mkdir "$root"
}

# stamp_root: unpacks the cached root ($rootfs) into $root, stamps version and keys
# (board/common/post-build.sh) and, with --fault robot-server, makes an image whose robot
# server never starts (the end-to-end rollback test); squashes it to
# $binaries/rootfs.squashfs.
stamp_root() {
	log "unpacking the root filesystem"
	tar -C "$root" --numeric-owner -xf "$rootfs"
	OT2_VERSION=$version OT2_KEYRING_DIR=$keys/keyring "$tree/board/common/post-build.sh" "$root" "$board"
	if [ "$fault" = robot-server ]; then
		mkdir -p "$root/etc/systemd/system/ot2-robot-server.service.d"
		printf '[Service]\nExecStart=\nExecStart=/bin/false\n' \
			> "$root/etc/systemd/system/ot2-robot-server.service.d/fault.conf"
		# Its boot check gives up after 30 s instead of the board's own: the outcome is the
		# same, the three failed tries of the rollback test much sooner.
		sed -i 's/^boot_check_timeout = .*/boot_check_timeout = 30/' "$root/etc/ot2/update-server.toml"
		grep -qx 'boot_check_timeout = 30' "$root/etc/ot2/update-server.toml"
	fi
	log "making the squashfs"
	mksquashfs "$root" "$binaries/rootfs.squashfs" -comp gzip -noappend -no-progress -quiet
}

# store_result [FILE...]: signs the bundle of $binaries/rootfs.squashfs for the board's
# compatible string, then moves its disk image (with its .bmap and .sha256), the squashfs,
# the bundle and any further FILEs of $binaries into $result and prints where it is.
store_result() {
	local compatible=$BOARD_COMPATIBLE image=$IMAGE_NAME sizes
	log "signing the bundle"
	"$venv/bin/update-server" bundle create --key "$keys/dev.key" --compatible "$compatible" \
		--revision "$BOARD_REVISION" --version "$version" --image "rootfs=$binaries/rootfs.squashfs" -o "$binaries/rootfs.bundle"
	rm -rf "$result.tmp"
	mkdir -p "$result.tmp"
	(cd "$binaries" && cp --sparse=always "$image" "$image.bmap" "$image.sha256" rootfs.squashfs rootfs.bundle \
		"$@" "$result.tmp/")
	rm -rf "$result"
	mv "$result.tmp" "$result"
	sizes="$image $(du -h --apparent-size "$result/$image" | cut -f1), rootfs.squashfs $(du -m "$result/rootfs.squashfs" | cut -f1) MiB"
	timed "image $compatible $version${fault:+ (fault $fault)}: $sizes" "$start"
	deliver
}
