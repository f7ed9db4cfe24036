#!/usr/bin/env bash
# Makes the runtime base image of deploy/Dockerfile on this machine, without any registry: a
# distroless-like root file system taken from the host, `docker import`ed as
# http-tunnel-base:local.
#
#   deploy/seed-base.sh                 # make it when it is missing
#   deploy/seed-base.sh --force         # make it again
#   deploy/seed-base.sh BINARY...       # take the libraries these binaries need (default: the
#                                       # release binaries under target/release)
#
# The image holds exactly:
#   - the shared libraries the binaries are linked against, as `ldd` lists them (glibc's libc,
#     libm, the loader, libgcc_s, ...), copied from the host that built the binaries, at the
#     same paths, in Debian's merged-/usr layout (/lib and /lib64 are links into /usr);
#   - the host's CA certificates (/etc/ssl/certs/ca-certificates.crt), for tls:// NATS URLs
#     and the client's wss:// servers;
#   - /etc/passwd and /etc/group with root, nobody and the non-root user `tunnel` (uid and gid
#     10001, the USER of the images), /etc/nsswitch.conf (host names from /etc/hosts, then
#     DNS), and /tmp (mode 1777).
# No shell, no package manager. The binaries must come from this same host (or one with the
# same glibc or older): they are run against its libraries.
#
# With a registry, skip this: deploy/Dockerfile defaults to a public distroless image.
#
# Environment:
#   SEED_BASE_IMAGE   the name to give the image (default http-tunnel-base:local)
#   CARGO_TARGET_DIR  where the release binaries are (default <repo>/target)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
image="${SEED_BASE_IMAGE:-http-tunnel-base:local}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

log() { printf 'seed-base: %s\n' "$*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

force=0
binaries=()
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*) fail "unknown option '$arg' (try --help)" ;;
        *) binaries+=("$arg") ;;
    esac
done

command -v docker >/dev/null 2>&1 || fail "docker is not installed"
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer ('docker info' fails)"
command -v ldd >/dev/null 2>&1 || fail "ldd is not installed (Debian: it comes with libc-bin)"

if ((force == 0)) && docker image inspect "$image" >/dev/null 2>&1; then
    log "$image is already there (--force to make it again)"
    exit 0
fi

if ((${#binaries[@]} == 0)); then
    for b in tunnel-ingress tunnel-session-host tunnel-auditor tunnel tunnel-healthcheck; do
        binaries+=("$target_dir/release/$b")
    done
fi
for b in "${binaries[@]}"; do
    [[ -x "$b" ]] || fail "$b is missing: build the binaries first (cargo build --release --locked --bins)"
done

# The libraries: every absolute path ldd prints (the "=> /path" ones and the loader's line).
mapfile -t libs < <(ldd "${binaries[@]}" 2>/dev/null | grep -o '/[^ ]*\.so[^ ]*' | sort -u)
((${#libs[@]} > 0)) || fail "ldd lists no libraries for ${binaries[*]}"
ca_file=/etc/ssl/certs/ca-certificates.crt
[[ -s "$ca_file" ]] || fail "$ca_file is missing (Debian: apt-get install ca-certificates)"

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/http-tunnel-base.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT

# Debian's merged /usr: /lib, /lib64 and /bin-less; the libraries live under /usr.
mkdir -p "$rootfs"/usr/lib "$rootfs"/usr/lib64 "$rootfs"/etc/ssl/certs "$rootfs"/tmp \
    "$rootfs"/usr/local/bin "$rootfs"/home/tunnel
ln -s usr/lib "$rootfs/lib"
ln -s usr/lib64 "$rootfs/lib64"
chmod 1777 "$rootfs/tmp"

for lib in "${libs[@]}"; do
    # /lib/x86_64-linux-gnu/libc.so.6 -> /usr/lib/x86_64-linux-gnu/libc.so.6 (the same file
    # through the links above); the file itself, not the host's symbolic link.
    case "$lib" in
        /usr/*) dest="$lib" ;;
        /lib/* | /lib64/*) dest="/usr$lib" ;;
        *) fail "unexpected library path $lib" ;;
    esac
    mkdir -p "$rootfs$(dirname "$dest")"
    cp -L "$lib" "$rootfs$dest"
    log "library $lib"
done

cp -L "$ca_file" "$rootfs/etc/ssl/certs/ca-certificates.crt"
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
tunnel:x:10001:10001:http-tunnel:/home/tunnel:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
tunnel:x:10001:
EOF
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"

# Owned by root (the user's home by the user), whoever runs this script.
tar --numeric-owner --owner=0 --group=0 --sort=name -C "$rootfs" --exclude=./home/tunnel -cf "$rootfs.tar" .
tar --numeric-owner --owner=10001 --group=10001 -C "$rootfs" -rf "$rootfs.tar" ./home/tunnel
trap 'rm -rf "$rootfs" "$rootfs.tar"' EXIT

old="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
glibc="$(ldd --version 2>/dev/null | head -n1 | grep -o '[0-9][0-9.]*$' || echo unknown)"
docker import \
    --change 'USER 10001:10001' \
    --change 'ENV PATH=/usr/local/bin:/usr/bin' \
    --message "http-tunnel runtime base: glibc $glibc libraries, CA certificates, user tunnel (10001)" \
    "$rootfs.tar" "$image" >/dev/null
# The image this one replaces (--force), unless images built on it still use it.
if [[ -n "$old" && "$old" != "$(docker image inspect --format '{{.Id}}' "$image")" ]]; then
    docker rmi "$old" >/dev/null 2>&1 || true
fi
log "made $image ($(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1 / 1e6}'))"
