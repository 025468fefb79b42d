# Sourced by packaging/build-deb.sh and packaging/build-rpm.sh.
# shellcheck shell=bash

# The repository root (this file lives in packaging/).
KDUMPD_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The version: kdumpd/__init__.py is the one place it lives.
kdumpd_version() {
    local v
    v=$(sed -n 's/^__version__[[:space:]]*=[[:space:]]*["'\'']\([^"'\'']*\)["'\''].*/\1/p' \
        "$KDUMPD_TOP/kdumpd/__init__.py" | head -n 1)
    if [ -z "$v" ]; then
        echo "cannot read __version__ from kdumpd/__init__.py" >&2
        return 1
    fi
    printf '%s\n' "$v"
}

# A fixed timestamp for reproducible builds: $SOURCE_DATE_EPOCH if set, else
# the date of the latest commit, else (a tree with no commit yet) now.
kdumpd_source_epoch() {
    if [ -n "${SOURCE_DATE_EPOCH-}" ]; then
        printf '%s\n' "$SOURCE_DATE_EPOCH"
    elif git -C "$KDUMPD_TOP" log -1 --format=%ct 2>/dev/null | grep -q .; then
        git -C "$KDUMPD_TOP" log -1 --format=%ct
    else
        date +%s
    fi
}

# Copy the source tree into $1: the tracked files plus untracked files that
# are not ignored (so it works both in a fresh clone and during development).
# Outside a git work tree, everything but .git, build/ and dist/ is copied.
kdumpd_copy_tree() {
    local dest=$1
    mkdir -p "$dest"
    if git -C "$KDUMPD_TOP" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # Files deleted in the work tree but still in the index are skipped.
        (cd "$KDUMPD_TOP" &&
            git ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do
                if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
            done |
            tar --null --no-recursion -T - -cf -) | tar -C "$dest" -xf -
    else
        (cd "$KDUMPD_TOP" &&
            tar --exclude=./.git --exclude=./build --exclude=./dist -cf - .) |
            tar -C "$dest" -xf -
    fi
}

# Distribution packages are built with the distribution's tools and Python,
# not with whatever a developer's PATH puts first (pyenv, a virtualenv, ...).
kdumpd_system_env() {
    export PATH=/usr/sbin:/usr/bin:/sbin:/bin
    unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYENV_VERSION CONDA_PREFIX
}

# Files both packages ship must exist (README.md is what the unit's
# Documentation= points to).
kdumpd_check_tree() {
    local f missing=0
    for f in pyproject.toml kdumpd/__init__.py README.md units/kdumpd.service \
        conf/kdumpd.yaml conf/kdumpd.catalog conf/org.kdumpd.Kdump1.conf \
        conf/org.kdumpd.Kdump1.policy \
        conf/hooks/kernel-postinst conf/hooks/kernel-postrm \
        conf/hooks/initramfs-post-update conf/hooks/90-kdumpd.install \
        conf/hooks/network-up; do
        if [ ! -e "$KDUMPD_TOP/$f" ]; then
            echo "missing $f: the packages ship it" >&2
            missing=1
        fi
    done
    return $missing
}

# What both build scripts start with: sets outdir (absolute, created), version,
# SOURCE_DATE_EPOCH and work (a temporary directory removed on exit).
# Usage: kdumpd_start_build KIND [OUTDIR]
kdumpd_start_build() {
    outdir=${2:-$KDUMPD_TOP/dist}
    mkdir -p "$outdir"
    outdir=$(cd "$outdir" && pwd)
    kdumpd_system_env
    kdumpd_check_tree
    version=$(kdumpd_version)
    SOURCE_DATE_EPOCH=$(kdumpd_source_epoch)
    export SOURCE_DATE_EPOCH
    work=$(mktemp -d "${TMPDIR:-/tmp}/kdumpd-$1.XXXXXX")
    # shellcheck disable=SC2064 # expand now: $work is fixed for this build
    trap "rm -rf '$work'" EXIT
}
