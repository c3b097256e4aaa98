#!/bin/sh
# Renders a board's bootloader script: board/BOARD/BOOT_SCRIPT of its meta with every @NAME@
# replaced from the meta, and the try countdowns and legal try counts generated from
# BOOT_TRIES in the bootloader's syntax (neither GRUB nor U-Boot's hush has arithmetic).
# Usage: render-boot-script.sh BOARD OUT   (used by post-image.sh, and by the tests)
set -eu

# shellcheck source=board/common/meta.sh
. "$(dirname "$0")/meta.sh"
load_meta "$1"

# shellcheck disable=SC2016 # the formats hold the bootloader's variable references
case "$BOOTLOADER" in
grub)
	first='if [ "$BOOT_%s_LEFT" = %d ]; then set BOOT_%s_LEFT=%d; set ot2_slot=%s\n'
	next='      elif [ "$BOOT_%s_LEFT" = %d ]; then set BOOT_%s_LEFT=%d; set ot2_slot=%s\n'
	last='      fi'
	legal='"$BOOT_%s_LEFT" = %d'
	;;
uboot)
	first='if test "${BOOT_%s_LEFT}" = %d; then setenv BOOT_%s_LEFT %d; setenv ot2_slot %s; '
	next='elif test "${BOOT_%s_LEFT}" = %d; then setenv BOOT_%s_LEFT %d; setenv ot2_slot %s; '
	last='fi'
	legal='"${BOOT_%s_LEFT}" = %d'
	;;
esac
for slot in A B; do
	export "COUNTDOWN_$slot=$(tries_chain "$slot" "$first" "$next" "$last")"
	export "LEFT_LEGAL_$slot=$(tries_legal "$slot" "$legal")"
done
render "$BOARD_DIR/$BOOT_SCRIPT" "$2"
