# shellcheck shell=sh
# Board facts for the board scripts (sourced by post-build.sh and post-image.sh; POSIX sh).
#
# load_meta BOARD reads board/BOARD/meta (KEY=value lines, the model being Home Assistant
# OS's buildroot-external/board/*/meta, https://github.com/home-assistant/operating-system)
# into exported variables, checks them and adds the derived ones:
#   BOARD, BOARD_DIR, SLOT_A_DEVICE, SLOT_B_DEVICE (PART_DEVICE + partition number).
# render TEMPLATE OUT writes TEMPLATE with every @NAME@ replaced by the variable NAME;
# a placeholder without a variable is an error (no half-rendered bootloader script).

meta_dir=$(cd "$(dirname "$0")/.." && pwd)

load_meta() {
	BOARD=$1
	BOARD_DIR=$meta_dir/$BOARD
	if [ ! -f "$BOARD_DIR/meta" ]; then
		echo "$0: unknown board '$BOARD' (no $BOARD_DIR/meta)" >&2
		exit 1
	fi
	set -a
	# shellcheck source=/dev/null
	. "$BOARD_DIR/meta"
	set +a
	for key in BOARD_COMPATIBLE BOARD_REVISION BOOTLOADER IMAGE_NAME BOOT_SCRIPT BOOT_TRIES BOOT_PART SLOT_A_PART SLOT_B_PART \
		PART_DEVICE BOOT_ENV BOOT_ENV_BACKUP; do
		if eval "[ -z \"\${$key:-}\" ]"; then
			echo "$0: $BOARD_DIR/meta: $key is not set" >&2
			exit 1
		fi
	done
	case "$BOOTLOADER" in
	grub | uboot) ;;
	*) echo "$0: $BOARD_DIR/meta: BOOTLOADER=$BOOTLOADER, expected grub or uboot" >&2; exit 1 ;;
	esac
	# The bootloader scripts compare the try counters as strings, one digit each, and the
	# update server reads a counter above 3 as a corrupt environment (MAX_TRIES in
	# update_server/update_server/bootmodel.py): the two must agree on what is legal.
	case "$BOOT_TRIES" in
	[1-3]) ;;
	*) echo "$0: $BOARD_DIR/meta: BOOT_TRIES=$BOOT_TRIES, expected 1..3" >&2; exit 1 ;;
	esac
	export BOARD BOARD_DIR SLOT_A_DEVICE="$PART_DEVICE$SLOT_A_PART" SLOT_B_DEVICE="$PART_DEVICE$SLOT_B_PART"
}

render() {
	awk -v template="$1" '
	{
		line = $0
		out = ""
		while (match(line, /@[A-Z][A-Z0-9_]*@/)) {
			name = substr(line, RSTART + 1, RLENGTH - 2)
			if (!(name in ENVIRON)) {
				printf "%s:%d: @%s@ has no value\n", template, NR, name > "/dev/stderr"
				failed = 1
				exit 1
			}
			out = out substr(line, 1, RSTART - 1) ENVIRON[name]
			line = substr(line, RSTART + RLENGTH)
		}
		print out line
	}
	END { exit failed }' "$1" > "$2.tmp"
	mv "$2.tmp" "$2"
}

# tries_chain SLOT FIRST NEXT LAST: FIRST, then NEXT for each further count, then LAST; the
# counts go from BOOT_TRIES down to 1 and each format is given (SLOT, n, SLOT, n-1, SLOT).
# The scripts count down with such chains: neither GRUB nor U-Boot's hush has arithmetic.
tries_chain() {
	n=$BOOT_TRIES
	format=$2
	while [ "$n" -gt 0 ]; do
		# shellcheck disable=SC2059 # the format is the caller's
		printf "$format" "$1" "$n" "$1" "$((n - 1))" "$1"
		format=$3
		n=$((n - 1))
	done
	printf '%s' "$4"
}

# tries_legal SLOT FORMAT: FORMAT (given SLOT, n) for n = 0..BOOT_TRIES, joined by " -o "
# (a test expression true when the slot's counter holds a legal value).
tries_legal() {
	n=0
	while [ "$n" -le "$BOOT_TRIES" ]; do
		[ "$n" -eq 0 ] || printf ' -o '
		# shellcheck disable=SC2059 # the format is the caller's
		printf "$2" "$1" "$n"
		n=$((n + 1))
	done
}
