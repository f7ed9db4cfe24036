#!/usr/bin/env bash
# Brings up deploy/compose.yaml (three NATS nodes, the auditor, two session-hosts, two ingresses)
# from the images of deploy/build-images.sh, runs a real tunnel through it, stops one NATS node
# and the session-host the tunnel is on while traffic flows, and checks that the tunnel keeps
# serving. Run by .ci/run; needs Docker (fails when the engine does not answer), docker-compose
# (v1) or `docker compose` (v2), python3 and curl.
#
#   deploy/compose-test.sh
#
# Steps (every wait polls with a deadline):
#   1. the release binaries (built when missing), the base image (seeded when missing), the
#      images http-tunnel:dev and http-tunnel-nats:dev;
#   2. the NATS cluster and the auditor; an account and a token (`tunnel admin --replicas 3`);
#      then the session-hosts and ingresses; every container healthy;
#   3. on the host: a local service, a TCP balancer in front of both session-hosts (the client
#      takes one --server URL), and `tunnel http` (target/release/tunnel) through it;
#   4. steady traffic through both ingresses (deploy/compose-test.py load);
#   5. stops the NATS node that leads the JetStream cluster, waits for the traffic to flow again,
#      then stops the session-host holding the tunnel (SIGTERM: it moves its client), waits again;
#   6. prints requests sent and failed and the recovery time after each stop, and tears down
#      everything (also on failure or Ctrl-C): containers, network, volumes.
#
# Environment:
#   COMPOSE_TEST_PROJECT   compose project name (default http-tunnel-test)
#   COMPOSE_TEST_DEADLINE  seconds allowed for each wait (default 90)
#   CARGO_TARGET_DIR       where the release binaries are (default <repo>/target)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"
started_at=$SECONDS

project="${COMPOSE_TEST_PROJECT:-http-tunnel-test}"
deadline_secs="${COMPOSE_TEST_DEADLINE:-90}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
bin="$target_dir/release"
work="$root/.run/compose-test"
helper="$root/deploy/compose-test.py"

say() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
fail() {
    printf '\ncompose-test: FAILED: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Prerequisites: Docker must be there. A missing engine is a failure, never a skip.

command -v docker >/dev/null 2>&1 || fail "docker is not installed: this test needs a Docker engine"
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer ('docker info' fails)"
if command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
else
    fail "neither docker-compose nor 'docker compose' is installed"
fi
command -v python3 >/dev/null 2>&1 || fail "python3 is required"
command -v curl >/dev/null 2>&1 || fail "curl is required"

compose() { "${compose_cmd[@]}" -p "$project" -f "$root/deploy/compose.yaml" "$@"; }

# ---------------------------------------------------------------------------------------------
# Tear-down on every exit path

pids=()
cleanup() {
    local status=$?
    set +e
    trap - EXIT
    trap '' INT TERM HUP
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if ((status != 0)) && [[ -n "${compose_up:-}" ]]; then
        say "logs of the stack (last lines of each)"
        compose logs --no-color --tail 15 >&2 2>/dev/null
        for f in tunnel balancer serve; do
            [[ -s "$work/$f.log" ]] && { note "--- $f.log"; tail -n 15 "$work/$f.log" | sed 's/^/    | /' >&2; }
        done
    fi
    say "tearing down (compose down -v)"
    compose down -v --remove-orphans -t 3 >/dev/null 2>&1
    local left
    left="$(docker ps -aq --filter "label=com.docker.compose.project=$project")$(docker volume ls -q --filter "label=com.docker.compose.project=$project")$(docker network ls -q --filter "label=com.docker.compose.project=$project")"
    if [[ -n "$left" ]]; then
        printf 'compose-test: containers, volumes or networks of %s are left over\n' "$project" >&2
        ((status == 0)) && status=1
    fi
    note "total run time $((SECONDS - started_at)) s"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Leftovers of an earlier run that was killed.
compose down -v --remove-orphans -t 1 >/dev/null 2>&1 || true

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for WHAT COMMAND... : runs COMMAND until it succeeds, for at most deadline_secs.
wait_for() {
    local what="$1"
    shift
    local end=$((SECONDS + deadline_secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || fail "$what: not within ${deadline_secs}s"
        sleep 0.25
    done
}

# healthy SERVICE... : every one of them runs and its health check passes.
healthy() {
    local s
    for s in "$@"; do
        [[ "$(docker ps --filter "label=com.docker.compose.project=$project" \
            --filter "label=com.docker.compose.service=$s" --format '{{.Status}}')" == *"(healthy)"* ]] || return 1
    done
}

now() { date +%s.%3N; }

# ---------------------------------------------------------------------------------------------
# 1. Binaries and images

rm -rf "$work"
mkdir -p "$work"
say "images (deploy/build-images.sh --cargo: binaries built when missing, base seeded when missing)"
CARGO_TARGET_DIR="$target_dir" "$root/deploy/build-images.sh" --cargo

# ---------------------------------------------------------------------------------------------
# 2. The stack

TUNNEL_NATS_PORT="$(free_port)"
TUNNEL_NATS_HTTP_PORT="$(free_port)"
TUNNEL_AUDITOR_PORT="$(free_port)"
TUNNEL_HOST1_PORT="$(free_port)"
TUNNEL_HOST2_PORT="$(free_port)"
TUNNEL_INGRESS1_PORT="$(free_port)"
TUNNEL_INGRESS2_PORT="$(free_port)"
export TUNNEL_NATS_PORT TUNNEL_NATS_HTTP_PORT TUNNEL_AUDITOR_PORT TUNNEL_HOST1_PORT \
    TUNNEL_HOST2_PORT TUNNEL_INGRESS1_PORT TUNNEL_INGRESS2_PORT
admin_password="${NATS_ADMIN_PASSWORD:-dev-admin}"
admin_url="nats://admin:$admin_password@127.0.0.1:$TUNNEL_NATS_PORT"

say "starting the NATS cluster and the auditor (project $project)"
compose_up=1
up_at=$SECONDS
compose up -d --no-build n1 n2 n3 auditor >"$work/compose-up.log" 2>&1 ||
    { cat "$work/compose-up.log" >&2; fail "compose up (NATS, auditor)"; }
wait_for "the NATS nodes and the auditor healthy" healthy n1 n2 n3 auditor
note "healthy after $((SECONDS - up_at)) s"

say "an account and a token: tunnel admin --nats nats://admin:***@127.0.0.1:$TUNNEL_NATS_PORT --replicas 3"
"$bin/tunnel" admin --nats "$admin_url" --replicas 3 account create demo >/dev/null ||
    fail "tunnel admin account create"
token="$("$bin/tunnel" admin --nats "$admin_url" --replicas 3 --json token create demo --name demo |
    python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["token"])')" ||
    fail "tunnel admin token create"

say "starting the session-hosts and the ingresses"
compose up -d --no-build >>"$work/compose-up.log" 2>&1 ||
    { cat "$work/compose-up.log" >&2; fail "compose up (all)"; }
wait_for "every container healthy" healthy n1 n2 n3 auditor session-host-1 session-host-2 ingress-1 ingress-2
note "the whole stack healthy after $((SECONDS - up_at)) s"

# ---------------------------------------------------------------------------------------------
# 3. A tunnel from the host

marker="through-the-containers-$RANDOM$RANDOM"
serve_port="$(free_port)"
balancer_port="$(free_port)"
python3 "$helper" serve --port "$serve_port" --marker "$marker" >"$work/serve.log" 2>&1 &
pids+=("$!")
python3 "$helper" balance --port "$balancer_port" \
    --upstream "127.0.0.1:$TUNNEL_HOST1_PORT" --upstream "127.0.0.1:$TUNNEL_HOST2_PORT" >"$work/balancer.log" 2>&1 &
pids+=("$!")
wait_for "the local service" curl -fsS --max-time 2 "http://127.0.0.1:$serve_port/"

say "tunnel http $serve_port --name demo --server ws://127.0.0.1:$balancer_port (the balancer)"
TUNNEL_STATE_DIR="$work/state" TUNNEL_TOKEN="$token" RUST_LOG=warn \
    "$bin/tunnel" http "$serve_port" --name demo --server "ws://127.0.0.1:$balancer_port" --json \
    >"$work/tunnel.log" 2>&1 &
tunnel_pid=$!
pids+=("$tunnel_pid")
wait_for "the tunnel ready" grep -q '^{"event":"ready"' "$work/tunnel.log"
kill -0 "$tunnel_pid" 2>/dev/null || fail "the tunnel client exited"

url1="http://127.0.0.1:$TUNNEL_INGRESS1_PORT/t/demo/"
url2="http://127.0.0.1:$TUNNEL_INGRESS2_PORT/t/demo/"
through() { curl -fsS --max-time 5 "$1" | grep -q "$marker"; }
wait_for "a request through ingress-1" through "$url1"
wait_for "a request through ingress-2" through "$url2"
note "GET $url1 and $url2: 200, the local page"

# ---------------------------------------------------------------------------------------------
# 4-5. Traffic, and one NATS node and one session-host stopped

requests="$work/requests.jsonl"
events="$work/events.jsonl"
: >"$events"
python3 "$helper" load --url "$url1" --url "$url2" --marker "$marker" --out "$requests" &
pids+=("$!")

# ok_since T N : at least N requests ended after T, and the last 20 of them all succeeded.
ok_since() {
    python3 - "$requests" "$1" "$2" <<'PY'
import json, sys
path, since, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
reqs = sorted((json.loads(l) for l in open(path) if l.strip()), key=lambda r: r["t1"])
after = [r for r in reqs if r["t1"] > since]
sys.exit(0 if len(after) >= n and all(r["ok"] for r in after[-20:]) else 1)
PY
}

# stop_under_traffic SERVICE LABEL GRACE : stops SERVICE (SIGTERM, SIGKILL after GRACE s) while
# the traffic flows, records the moment, and waits until the traffic flows again.
stop_under_traffic() {
    local service="$1" label="$2" grace="$3" t stop_at
    say "stopping $service ($label) under traffic"
    t="$(now)"
    printf '{"t": %s, "what": "stop %s (%s)"}\n' "$t" "$service" "$label" >>"$events"
    stop_at=$SECONDS
    compose stop -t "$grace" "$service" >/dev/null 2>&1
    note "docker stop took $((SECONDS - stop_at)) s"
    wait_for "traffic flowing again after stopping $service" ok_since "$t" 500
}

t="$(now)"
wait_for "steady traffic before any stop" ok_since "$t" 100

# The node that leads the JetStream meta group: losing it costs an election too.
leader="$(curl -fsS --max-time 5 "http://127.0.0.1:$TUNNEL_NATS_HTTP_PORT/jsz" |
    python3 -c 'import json, sys; print(json.load(sys.stdin).get("meta_cluster", {}).get("leader", ""))')"
[[ "$leader" =~ ^n[123]$ ]] || fail "no JetStream meta leader reported (got '$leader')"
stop_under_traffic "$leader" "the NATS node leading JetStream" 10

# The session-host holding the tunnel: host_sessions 1 in its metrics. On SIGTERM it tells its
# client to move (through the balancer, to the other host), then drains.
sessions() { curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" | sed -n 's/^host_sessions \([0-9]*\).*/\1/p'; }
if [[ "$(sessions "$TUNNEL_HOST1_PORT")" == 1 ]]; then
    holder=session-host-1 survivor_port="$TUNNEL_HOST2_PORT"
elif [[ "$(sessions "$TUNNEL_HOST2_PORT")" == 1 ]]; then
    holder=session-host-2 survivor_port="$TUNNEL_HOST1_PORT"
else
    fail "no session-host reports the tunnel's session (host_sessions)"
fi
stop_under_traffic "$holder" "the session-host holding the tunnel" 20
[[ "$(sessions "$survivor_port")" == 1 ]] || fail "the tunnel's session is not on the other session-host"
note "the client is on the other session-host now"

kill -TERM "${pids[-1]}"
wait "${pids[-1]}" || true
unset 'pids[-1]'

# ---------------------------------------------------------------------------------------------
# 6. Figures

result="$(python3 "$helper" report --requests "$requests" --events "$events")"
python3 - "$result" <<'PY' >&2
import json, sys
r = json.loads(sys.argv[1])
print(f"==> requests through both ingresses: {r['sent']} sent, {r['failed']} failed")
for e in r["events"]:
    rec = "not recovered" if e["recovery_secs"] is None else f"{e['recovery_secs']:.2f} s"
    codes = f" (statuses {e['statuses']})" if e["failed"] else ""
    print(f"    {e['event']}: {e['sent']} sent after it, {e['failed']} failed{codes}; recovered in {rec}")
PY
printf '%s\n' "$result" >"$work/result.json"
say "compose test passed ($((SECONDS - started_at)) s so far; figures in .run/compose-test/result.json)"
