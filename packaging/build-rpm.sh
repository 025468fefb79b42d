#!/bin/bash
# Build the RPM on this (Debian) machine: packaging/build-rpm.sh [OUTDIR]
# (default: dist/).
#
# Makes kdumpd-<version>.tar.gz from the source tree, runs rpmbuild -bb on
# packaging/rpm/kdumpd.spec with -D 'kdumpd_version <version>' (read from
# kdumpd/__init__.py, the one place the version lives), and copies the
# noarch rpm into OUTDIR. Debian's rpm lacks Fedora's macro packages:
# packaging/rpm/macros.local-build stands in for them, for this script only
# (on Fedora, rpmbuild uses the spec's BuildRequires). Build dependencies are
# not checked (--nodeps): there is no RPM database of them here.
# The build log goes to stderr; the only line on stdout is the rpm's path.
set -euo pipefail

# shellcheck source=packaging/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

kdumpd_start_build rpm "${1:-}"
mkdir -p "$work/SOURCES" "$work/stage"

# Source0: a reproducible tarball of the tree, kdumpd-<version>/...
kdumpd_copy_tree "$work/stage/kdumpd-$version"
tar -C "$work/stage" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 \
    --numeric-owner -cf - "kdumpd-$version" | gzip -n >"$work/SOURCES/kdumpd-$version.tar.gz"

rpmbuild -bb --nodeps \
    --load "$KDUMPD_TOP/packaging/rpm/macros.local-build" \
    --define "_kdumpd_local_helper $KDUMPD_TOP/packaging/rpm/pyproject-local.py" \
    --define "_topdir $work" \
    --define "kdumpd_version $version" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    --define "_buildhost reproducible" \
    "$KDUMPD_TOP/packaging/rpm/kdumpd.spec" >&2

rpmfile=$(find "$work/RPMS" -name "kdumpd-$version-*.noarch.rpm" | head -n 1)
[ -n "$rpmfile" ] || { echo "rpmbuild produced no kdumpd rpm" >&2; exit 1; }
cp "$rpmfile" "$outdir/"
echo "$outdir/$(basename "$rpmfile")"
