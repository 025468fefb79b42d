#!/bin/bash
# Build the Debian package: packaging/build-deb.sh [OUTDIR]   (default: dist/)
#
# Copies the source tree into a temporary directory, adds packaging/debian as
# debian/, generates debian/changelog from kdumpd.__version__ (the one place
# the version lives), runs dpkg-buildpackage -b, and copies
# kdumpd_<version>_all.deb into OUTDIR. The build log goes to stderr; the only
# line on stdout is the path of the .deb.
set -euo pipefail

# shellcheck source=packaging/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

kdumpd_start_build deb "${1:-}"
src=$work/kdumpd-$version

kdumpd_copy_tree "$src"
rm -rf "$src/debian"
cp -a "$KDUMPD_TOP/packaging/debian" "$src/debian"

# The changelog names the same maintainer as debian/control.
maintainer=$(sed -n 's/^Maintainer:[[:space:]]*//p' "$src/debian/control")
{
    printf 'kdumpd (%s) unstable; urgency=medium\n\n' "$version"
    printf '  * Release %s.\n\n' "$version"
    printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} >"$src/debian/changelog"

(cd "$src" && dpkg-buildpackage -us -uc -b) >&2

deb=kdumpd_${version}_all.deb
cp "$work/$deb" "$outdir/$deb"
echo "$outdir/$deb"
