#!/usr/bin/env bash
# Soak test: the whole http-tunnel system under mixed traffic for a while, on this machine,
# watching every process for growth and every exchange for errors. Not part of the test suite.
#
#   bench/soak/run.sh [--skip-build] [soak.py options...]
#   bench/soak/run.sh --duration 20m                # the run docs/benchmarks.md#soak reports
#
# Builds http-tunnel in release and bench-upstream (bench/upstream, the local service), finds or
# installs nats-server (scripts/ensure-nats-server.sh), then runs bench/soak/soak.py, which
# prints a table per component and a verdict, writes bench/results/soak-<time>.json and .csv,
# and exits 1 when the verdict fails (2 when the system did not come up, 130 on Ctrl-C).
# Every soak.py option passes through (`python3 bench/soak/soak.py --help`): --duration (2m),
# --warmup (5m), --rate (50 req/s), --sse, --ws, --churn-every, thresholds.
#
#   --skip-build    use the binaries of the previous build as they are
#
# Environment: CARGO_TARGET_DIR (where http-tunnel is built, default <repo>/target);
# NATS_SERVER_BIN, as scripts/ensure-nats-server.sh. Logs go to .run/soak/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
export PATH="$HOME/.cargo/bin:$PATH"

skip_build=0
pass=()
while (($#)); do
    case "$1" in
        --skip-build) skip_build=1; shift ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) pass+=("$1"); shift ;;
    esac
done

say() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'bench/soak/run.sh: %s\n' "$*" >&2; exit 2; }

nats_server="$("$root/scripts/ensure-nats-server.sh")" || fail "no usable nats-server"

tunnel_target="${CARGO_TARGET_DIR:-$root/target}"
# Shared with bench/run.sh: the bench helpers are built once for both.
bench_target="$root/.run/bench/target"
if [[ "$skip_build" == 0 ]]; then
    say "building http-tunnel (cargo build --release --locked)"
    (cd "$root" && CARGO_TARGET_DIR="$tunnel_target" cargo build --release --locked \
        --bin tunnel --bin tunnel-ingress --bin tunnel-session-host --bin tunnel-auditor >&2)
    say "building bench-upstream (bench/upstream, standalone project)"
    (cd "$root/bench/upstream" && CARGO_TARGET_DIR="$bench_target" cargo build --release --locked --bin bench-upstream >&2)
fi
for b in tunnel tunnel-ingress tunnel-session-host tunnel-auditor; do
    [[ -x "$tunnel_target/release/$b" ]] || fail "missing $tunnel_target/release/$b (build first)"
done
[[ -x "$bench_target/release/bench-upstream" ]] || fail "missing $bench_target/release/bench-upstream (build first)"

git_desc="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$root" status --porcelain --untracked-files=no -- . ':!bench' ':!docs' 2>/dev/null)" ]]; then
    git_desc="$git_desc+dirty"
fi
command_line="bench/soak/run.sh"
((${#pass[@]})) && command_line+=" ${pass[*]}"

exec python3 "$root/bench/soak/soak.py" \
    --bin-dir "$tunnel_target/release" \
    --upstream "$bench_target/release/bench-upstream" \
    --nats-server "$nats_server" \
    --results-dir "$root/bench/results" \
    --workdir "$root/.run/soak" \
    --git "$git_desc" \
    --command "$command_line" \
    "${pass[@]}"
