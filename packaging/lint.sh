#!/bin/bash
# Lint the distribution packages: packaging/lint.sh [FILE.deb|FILE.rpm ...]
#
# Without arguments, builds both packages afresh (build-deb.sh, build-rpm.sh)
# into a temporary directory; with arguments, lints the given files. Runs
#   lintian --fail-on error   on the .deb,
#   rpmlint (Fedora-like configuration, packaging/rpm/rpmlint.toml)
#                             on packaging/rpm/kdumpd.spec and the .rpm,
# and exits non-zero if either reports an error (or a tool is missing).
# Warnings are printed but do not fail; packaging/LINTIAN.md explains them.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=packaging/common.sh
. "$here/common.sh"
kdumpd_system_env
SOURCE_DATE_EPOCH=$(kdumpd_source_epoch)
export SOURCE_DATE_EPOCH

for tool in lintian rpmlint rpmbuild dpkg-buildpackage; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "lint.sh: $tool is not installed" >&2
        exit 2
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/kdumpd-lint.XXXXXX")
trap 'rm -rf "$work"' EXIT

debs=() rpms=()
if [ $# -eq 0 ]; then
    deb=$("$here/build-deb.sh" "$work/dist" 2>"$work/build-deb.log") ||
        { cat "$work/build-deb.log" >&2; echo "lint.sh: build-deb.sh failed" >&2; exit 1; }
    rpmfile=$("$here/build-rpm.sh" "$work/dist" 2>"$work/build-rpm.log") ||
        { cat "$work/build-rpm.log" >&2; echo "lint.sh: build-rpm.sh failed" >&2; exit 1; }
    debs=("$deb") rpms=("$rpmfile")
else
    for f in "$@"; do
        case "$f" in
            *.deb) debs+=("$f") ;;
            *.rpm) rpms+=("$f") ;;
            *) echo "lint.sh: not a .deb or .rpm: $f" >&2; exit 2 ;;
        esac
    done
fi

status=0

for deb in "${debs[@]}"; do
    echo "== lintian $(basename "$deb")"
    # Lintian warns when run as root; that is not about the package.
    lintian --fail-on error --display-info "$deb" 2> >(grep -v '^running with root privileges' >&2) ||
        status=1
done

# rpmlint parses the spec with rpm, which needs the version define and, on
# Debian, the stand-in Fedora macros: give rpm a private ~/.rpmmacros.
mkdir -p "$work/home"
{
    cat "$here/rpm/macros.local-build"
    echo "%_kdumpd_local_helper $here/rpm/pyproject-local.py"
    echo "%kdumpd_version $(kdumpd_version)"
} >"$work/home/.rpmmacros"

# rpmlint takes one configuration path: a directory of *.toml files.
mkdir -p "$work/rpmlint"
cp "$here/rpm/rpmlint.toml" "$work/rpmlint/"
if command -v checkbashisms >/dev/null 2>&1; then
    echo 'Checks = ["BashismsCheck"]' >"$work/rpmlint/bashisms.toml"
else
    echo "lint.sh: checkbashisms (devscripts) not installed: rpmlint's BashismsCheck skipped" >&2
fi

echo "== rpmlint kdumpd.spec ${rpms[*]##*/}"
HOME=$work/home XDG_CONFIG_HOME=$work/home/.config \
    rpmlint -c "$work/rpmlint" "$here/rpm/kdumpd.spec" "${rpms[@]}" || status=1

# The kernel hooks are POSIX sh: check them with dash and checkbashisms.
echo "== kernel hooks"
for hook in "$KDUMPD_TOP"/conf/hooks/*; do
    dash -n "$hook" || status=1
    if command -v checkbashisms >/dev/null 2>&1; then
        checkbashisms "$hook" || status=1
    fi
done

if [ $status -eq 0 ]; then
    echo "lint.sh: no errors"
else
    echo "lint.sh: errors found" >&2
fi
exit $status
