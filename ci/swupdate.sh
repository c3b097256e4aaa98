#!/bin/bash
# Debian's SWUpdate, unpacked (not installed: its package would start a daemon) into the
# cache, for the tests that hand it our bundles (update_server/tests/test_swu_format.py).
# Prints the directory; its usr/bin/swupdate runs with LD_LIBRARY_PATH set to its
# usr/lib/<triplet>. The packages come from the host's apt sources (`make deps` updated
# them): swupdate and those of its dependencies the host does not have.
set -euo pipefail
cache=${OT2_CACHE:-$HOME/.cache/ot2}
version=$(apt-cache policy swupdate | awk '/Candidate:/ {print $2}')
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
	echo "swupdate.sh: no swupdate package in the apt sources (run make deps)" >&2
	exit 1
fi
dir=$cache/swupdate-${version//[^A-Za-z0-9.+-]/_}
if [ -x "$dir/usr/bin/swupdate" ]; then
	echo "$dir"
	exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/swupdate.XXXXXX")
chmod 755 "$work"   # apt downloads as its own user where it can
trap 'rm -rf "$work"' EXIT
packages=()
while read -r package; do
	if ! dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
		packages+=("$package")
	fi
done < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
	--no-replaces --no-enhances swupdate | grep -v '^ \|^<' | sort -u)
(cd "$work" && apt-get download -q=2 "${packages[@]}")
mkdir "$work/root"
for deb in "$work"/*.deb; do
	dpkg-deb -x "$deb" "$work/root"
done
test -x "$work/root/usr/bin/swupdate"
mv "$work/root" "$dir.tmp"
mv -T "$dir.tmp" "$dir"
echo "$dir"
