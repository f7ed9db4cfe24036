#!/usr/bin/env bash
# Brings up the whole http-tunnel system on this machine and shows a tunnel serving a request.
#
#   scripts/up.sh            # start everything, show a request through a tunnel, stay up until Ctrl-C
#   scripts/up.sh --check    # the same, then stop everything and exit 0 (non-zero on any failure)
#
# What it does:
#   1. finds or installs nats-server >= 2.11 (scripts/ensure-nats-server.sh);
#   2. builds the release binaries (cargo build --release --locked);
#   3. starts nats-server (nats/dev.conf, a fresh JetStream store under .run/nats/store, encrypted
#      at rest with JS_KEY: given, or kept in .run/nats/js.key, made on first use), then
#      tunnel-auditor, tunnel-session-host and tunnel-ingress, and waits for each one's /readyz;
#   4. starts a demo local service (python3 -m http.server serving a generated page) and
#      `tunnel http <port> --name demo` in front of it;
#   5. requests the page through the tunnel by host (http://demo.localhost:8080/) and by path
#      (http://127.0.0.1:8080/t/demo/) and prints the answers.
# On exit (Ctrl-C, SIGTERM, an error or the end of --check) it stops every process it started.
#
# Environment:
#   UP_CHECK=1           same as --check
#   UP_NATS_PORT         NATS client port          (default 4222)
#   UP_NATS_HTTP_PORT    NATS monitoring port      (default 8222)
#   UP_INGRESS_PORT      ingress (public HTTP)     (default 8080)
#   UP_HOST_PORT         session-host (WebSocket)  (default 7070)
#   UP_AUDITOR_PORT      auditor (ops routes)      (default 7090)
#   UP_DEADLINE_SECS     how long to wait for each step to become ready (default 60)
#   JS_KEY               JetStream encryption key (default: the one in .run/nats/js.key, made
#                        on first use with mode 0600); only nats-server gets it
#   RUST_LOG             log filter of the services (default info)
# Logs go to .run/logs/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"

check="${UP_CHECK:-0}"
for arg in "$@"; do
    case "$arg" in
        --check) check=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "up.sh: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done
[[ "$check" == 1 || "$check" == true ]] && check=1 || check=0

nats_port="${UP_NATS_PORT:-4222}"
nats_http_port="${UP_NATS_HTTP_PORT:-8222}"
ingress_port="${UP_INGRESS_PORT:-8080}"
host_port="${UP_HOST_PORT:-7070}"
auditor_port="${UP_AUDITOR_PORT:-7090}"
deadline_secs="${UP_DEADLINE_SECS:-60}"

run_dir="$root/.run"
logs="$run_dir/logs"
store="$run_dir/nats/store"
js_key_file="$run_dir/nats/js.key"
demo_dir="$run_dir/demo"

# ---------------------------------------------------------------------------------------------
# Output and failure

say() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
fail() {
    printf '\nup.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

# Prints the last lines of a log file, indented, to explain a failure.
show_log() {
    [[ -s "$1" ]] || return 0
    printf '    --- last lines of %s ---\n' "${1#"$root"/}" >&2
    tail -n 25 "$1" | sed 's/^/    | /' >&2
}

# ---------------------------------------------------------------------------------------------
# Processes: every process started is recorded and stopped, newest first, on exit.

pids=()
names=()

# start NAME LOG COMMAND... : starts COMMAND in the background with stdout and stderr in LOG.
# Each process gets its own session (setsid), so a Ctrl-C in the terminal reaches this script
# alone and the processes are stopped in order: the tunnel client first (it releases its name),
# NATS last.
start() {
    local name="$1" log="$2"
    shift 2
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >"$log" 2>&1 </dev/null &
    else
        "$@" >"$log" 2>&1 </dev/null &
    fi
    pids+=("$!")
    names+=("$name")
}

alive() { kill -0 "$1" 2>/dev/null; }

stop_one() {
    local pid="$1" name="$2" i
    alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    # The servers drain for up to 10 s; give them a little more, then kill.
    for ((i = 0; i < 150; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        note "$name did not stop in time; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    # Stopping must not be cut short: no exit on a failed command, and a closed terminal or pipe
    # (SIGPIPE on the messages below) or another Ctrl-C does not interrupt it.
    set +e
    trap - EXIT
    trap '' INT TERM HUP PIPE
    if ((${#pids[@]} > 0)); then
        say "stopping ${#pids[@]} processes"
        local i
        for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
            stop_one "${pids[i]}" "${names[i]}"
        done
        note "stopped"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

# ---------------------------------------------------------------------------------------------
# Checks and waits

need() {
    command -v "$1" >/dev/null 2>&1 || fail "'$1' is required but not installed ($2)"
}

# Fails when something already listens on 127.0.0.1:PORT (or on all addresses).
port_free() {
    local port="$1" what="$2"
    if ! python3 - "$port" <<'PY'; then
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
        local holder=""
        if command -v ss >/dev/null 2>&1; then
            holder="$(ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -n1)"
        fi
        fail "port $port (for $what) is already in use${holder:+ by $holder}.
    Stop whatever holds it (a previous scripts/up.sh?) or choose another port, e.g.
    UP_${3}=$((port + 1)) scripts/up.sh"
    fi
}

# A free TCP port on 127.0.0.1, chosen by the kernel.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http NAME PID LOG URL : waits until URL answers 2xx, while the process PID lives.
wait_http() {
    local name="$1" pid="$2" log="$3" url="$4"
    local end=$((SECONDS + deadline_secs))
    while ((SECONDS < end)); do
        if ! alive "$pid"; then
            show_log "$log"
            fail "$name exited during start-up"
        fi
        if curl -fsS --max-time 2 -o /dev/null "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    show_log "$log"
    fail "$name was not ready within ${deadline_secs}s ($url)"
}

# ---------------------------------------------------------------------------------------------
# 0. Prerequisites

need cargo "install Rust with rustup: https://rustup.rs"
need curl "Debian: apt-get install curl"
need python3 "Debian: apt-get install python3 python3-pip"

port_free "$nats_port" "NATS" NATS_PORT
port_free "$nats_http_port" "NATS monitoring" NATS_HTTP_PORT
port_free "$ingress_port" "the ingress" INGRESS_PORT
port_free "$host_port" "the session-host" HOST_PORT
port_free "$auditor_port" "the auditor" AUDITOR_PORT

mkdir -p "$logs" "$demo_dir"

# ---------------------------------------------------------------------------------------------
# 1. nats-server and the binaries

say "finding nats-server >= 2.11"
nats_server="$(scripts/ensure-nats-server.sh)" || fail "no usable nats-server (see the messages above)"

say "building the release binaries (cargo build --release --locked; the first build takes a few minutes)"
cargo build --release --locked \
    --bin tunnel-ingress --bin tunnel-session-host --bin tunnel-auditor --bin tunnel ||
    fail "cargo build failed"
target_dir="$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
bin="$target_dir/release"
for b in tunnel-ingress tunnel-session-host tunnel-auditor tunnel; do
    [[ -x "$bin/$b" ]] || fail "the build did not produce $bin/$b"
done

# ---------------------------------------------------------------------------------------------
# 2. The services

nats_url="nats://127.0.0.1:$nats_port"
# The services' logs go to files: no colour escapes in them.
export NO_COLOR=1

# The JetStream store is encrypted at rest (nats/dev.conf: key $JS_KEY). A key given in the
# environment wins; otherwise the one kept in .run/nats/js.key, made here on first use, readable
# by this user alone. It reaches nats-server alone, through its environment (never a command
# line, which `ps` shows).
js_key="${JS_KEY:-}"
if [[ -z "$js_key" ]]; then
    if [[ ! -s "$js_key_file" ]]; then
        mkdir -p "$(dirname "$js_key_file")"
        (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$js_key_file") ||
            fail "could not write a JetStream encryption key to $js_key_file"
        note "made a JetStream encryption key in ${js_key_file#"$root"/} (mode 0600)"
    fi
    chmod 600 "$js_key_file"
    js_key="$(<"$js_key_file")"
fi
unset JS_KEY

say "starting nats-server on 127.0.0.1:$nats_port (fresh JetStream store in ${store#"$root"/}, encrypted at rest)"
rm -rf "$store"
mkdir -p "$store"
# nats/dev.conf sets store_dir to ./.run/nats/store, relative to the working directory (the
# repository root here); nats-server refuses -sd on top of a configured store_dir.
JS_KEY="$js_key" start nats-server "$logs/nats.log" \
    "$nats_server" -c "$root/nats/dev.conf" -a 127.0.0.1 -p "$nats_port" -m "$nats_http_port"
wait_http nats-server "${pids[-1]}" "$logs/nats.log" "http://127.0.0.1:$nats_http_port/healthz"

say "starting tunnel-auditor on 127.0.0.1:$auditor_port"
start tunnel-auditor "$logs/auditor.log" \
    "$bin/tunnel-auditor" --nats "$nats_url" --listen "127.0.0.1:$auditor_port"
wait_http tunnel-auditor "${pids[-1]}" "$logs/auditor.log" "http://127.0.0.1:$auditor_port/readyz"

# Session-hosts admit clients with account tokens: make an account and a token for the demo
# tunnel (the token is printed once; it stays in this shell only).
say "creating account demo and a token for the tunnel name demo: tunnel admin token create demo --name demo"
"$bin/tunnel" admin --nats "$nats_url" account create demo >/dev/null ||
    fail "could not create the demo account"
demo_token="$("$bin/tunnel" admin --nats "$nats_url" --json token create demo --name demo |
    python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["token"])')" ||
    fail "could not create the demo token"

say "starting tunnel-session-host on 127.0.0.1:$host_port"
start tunnel-session-host "$logs/session-host.log" \
    "$bin/tunnel-session-host" --nats "$nats_url" --listen "127.0.0.1:$host_port" \
    --public-url "http://{name}.localhost:$ingress_port"
wait_http tunnel-session-host "${pids[-1]}" "$logs/session-host.log" "http://127.0.0.1:$host_port/readyz"

say "starting tunnel-ingress on 127.0.0.1:$ingress_port (domain localhost)"
# No load balancer in front here: nothing to wait for before it stops accepting.
start tunnel-ingress "$logs/ingress.log" \
    env TUNNEL_UNREADY_BEFORE_STOP_SECS=0 \
    "$bin/tunnel-ingress" --nats "$nats_url" --listen "127.0.0.1:$ingress_port" --domain localhost
# The ops routes answer on hosts that name no tunnel, such as 127.0.0.1.
wait_http tunnel-ingress "${pids[-1]}" "$logs/ingress.log" "http://127.0.0.1:$ingress_port/readyz"

# ---------------------------------------------------------------------------------------------
# 3. A local service and a tunnel to it

marker="hello-through-the-tunnel-$RANDOM$RANDOM"
cat >"$demo_dir/index.html" <<HTML
<!doctype html>
<html><head><meta charset="utf-8"><title>http-tunnel demo</title></head>
<body><h1>It works.</h1>
<p>This page is served by a local python3 http.server and reached through http-tunnel.</p>
<p>marker: $marker</p></body></html>
HTML

demo_port="$(free_port)"
say "starting the demo local service on 127.0.0.1:$demo_port (python3 -m http.server)"
start demo-service "$logs/demo-service.log" \
    python3 -m http.server "$demo_port" --bind 127.0.0.1 --directory "$demo_dir"
wait_http demo-service "${pids[-1]}" "$logs/demo-service.log" "http://127.0.0.1:$demo_port/"

# The tunnel saves its name, server and resume secret here for `tunnel trail` and `replay`.
export TUNNEL_STATE_DIR="$root/.run/state"
say "starting: tunnel http $demo_port --server ws://127.0.0.1:$host_port --name demo --record"
# With stdout not a terminal the client prints one JSON object per line; the first is
# {"event":"ready","url":...,"name":...}.
start tunnel "$logs/tunnel.log" \
    env RUST_LOG="${RUST_LOG:-warn}" TUNNEL_TOKEN="$demo_token" \
    "$bin/tunnel" http "$demo_port" --server "ws://127.0.0.1:$host_port" --name demo --record --json
tunnel_pid="${pids[-1]}"
ready=""
end=$((SECONDS + deadline_secs))
while ((SECONDS < end)); do
    ready="$(grep -m1 '^{"event":"ready"' "$logs/tunnel.log" 2>/dev/null || true)"
    [[ -n "$ready" ]] && break
    if ! alive "$tunnel_pid"; then
        show_log "$logs/tunnel.log"
        fail "the tunnel client exited before it was ready"
    fi
    sleep 0.1
done
if [[ -z "$ready" ]]; then
    show_log "$logs/tunnel.log"
    fail "the tunnel client was not ready within ${deadline_secs}s"
fi
public_url="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["url"])' "$ready")"
note "$ready"

# ---------------------------------------------------------------------------------------------
# 4. Requests through the tunnel

# fetch LABEL URL [CURL ARGS...] : prints the response; fails unless it is a 200 with the marker.
fetch() {
    local label="$1" url="$2"
    shift 2
    local out="$run_dir/last-response.txt" status
    say "$label"
    note "curl -i $url"
    if ! status="$(curl -sS --max-time 15 -D "$out.head" -o "$out.body" -w '%{http_code}' "$@" "$url")"; then
        fail "curl could not reach $url"
    fi
    sed 's/\r$//; s/^/    | /' "$out.head" >&2
    sed 's/^/    | /' "$out.body" >&2
    printf '\n' >&2
    [[ "$status" == 200 ]] || fail "expected status 200 from $url, got $status"
    grep -q "$marker" "$out.body" || fail "the response from $url is not the demo page"
}

# curl resolves *.localhost to the loopback address itself (7.85+); --resolve makes older curls
# do the same.
fetch "request by host name: GET $public_url/" "http://demo.localhost:$ingress_port/" \
    --resolve "demo.localhost:$ingress_port:127.0.0.1"
fetch "request by path: GET http://127.0.0.1:$ingress_port/t/demo/" \
    "http://127.0.0.1:$ingress_port/t/demo/"

say "a name with no tunnel behind it gets a typed error"
offline="$(curl -sS --max-time 15 -o /dev/null -w '%{http_code} %header{x-tunnel-error}' \
    "http://127.0.0.1:$ingress_port/t/nobody-here/" 2>/dev/null || true)"
note "GET http://127.0.0.1:$ingress_port/t/nobody-here/ -> $offline"
[[ "$offline" == 502* ]] || fail "expected a 502 for a tunnel that is not online, got '$offline'"

# The ingress publishes one audit event per request; the auditor consumes them.
audited=""
end=$((SECONDS + 10))
while ((SECONDS < end)); do
    audited="$(curl -fsS --max-time 2 "http://127.0.0.1:$auditor_port/metrics" 2>/dev/null |
        sed -n 's/^auditor_events_total \([0-9]*\).*/\1/p' | head -n1 || true)"
    [[ -n "$audited" && "$audited" -ge 3 ]] && break
    sleep 0.2
done
if [[ -n "$audited" ]]; then
    note "the auditor recorded $audited audit events (see .run/logs/auditor.log)"
else
    note "the auditor reported no audit events yet (see .run/logs/auditor.log)"
fi

# The demo tunnel records: its exchanges are in the log, and replay compares them.
say "the recorded exchanges: tunnel trail demo --recorded"
recorded=""
end=$((SECONDS + 10))
while ((SECONDS < end)); do
    recorded="$("$bin/tunnel" trail demo --recorded --json 2>/dev/null | grep -c '"kind":"exchange"' || true)"
    [[ -n "$recorded" && "$recorded" -ge 2 ]] && break
    sleep 0.2
done
[[ -n "$recorded" && "$recorded" -ge 2 ]] || fail "expected the demo's exchanges in the log, found ${recorded:-none}"
note "$recorded exchanges recorded"
say "replaying them through the tunnel: tunnel replay demo --to http://127.0.0.1:$ingress_port/t/demo --compare"
"$bin/tunnel" replay demo --to "http://127.0.0.1:$ingress_port/t/demo" --compare --limit 2 >&2 ||
    fail "the replayed responses differ from the recorded ones"

if ((check)); then
    say "check passed: the tunnel served the demo page by host and by path, recorded and replayed it"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# 5. Stay up

cat >&2 <<EOF

http-tunnel is up. Everything below runs until you press Ctrl-C.

  tunnel "demo"    $public_url/   (also http://127.0.0.1:$ingress_port/t/demo/)
                   -> demo page at http://127.0.0.1:$demo_port/ (${demo_dir#"$root"/}/)
  ingress          http://127.0.0.1:$ingress_port        (/healthz /readyz /metrics)
  session-host     ws://127.0.0.1:$host_port             (/healthz /readyz /metrics)
  auditor          http://127.0.0.1:$auditor_port        (/healthz /readyz /metrics)
  nats-server      nats://127.0.0.1:$nats_port           (monitoring http://127.0.0.1:$nats_http_port)

  logs             .run/logs/{nats,auditor,session-host,ingress,demo-service,tunnel}.log

Try:
  curl -i http://demo.localhost:$ingress_port/
  $bin/tunnel admin --nats $nats_url token create demo    # a token for your own tunnels (shown once)
  $bin/tunnel http 3000 --server ws://127.0.0.1:$host_port --token <token>   # expose your port 3000
  TUNNEL_STATE_DIR=.run/state $bin/tunnel trail demo --follow    # the demo's requests, live
  TUNNEL_STATE_DIR=.run/state $bin/tunnel replay demo --compare --to http://127.0.0.1:$ingress_port/t/demo

Requests through the demo tunnel appear below.
EOF

# Show the client's request events as they happen (to the terminal, not to a log).
tail -n 0 -f "$logs/tunnel.log" >&2 &
pids+=("$!")
names+=("tail")

# Wait until a process ends by itself (a failure) or a signal arrives (the traps exit).
while true; do
    wait -n || true
    for i in "${!pids[@]}"; do
        if ! alive "${pids[i]}"; then
            case "${names[i]}" in
                nats-server) log="$logs/nats.log" ;;
                tunnel-auditor) log="$logs/auditor.log" ;;
                tunnel-session-host) log="$logs/session-host.log" ;;
                tunnel-ingress) log="$logs/ingress.log" ;;
                demo-service) log="$logs/demo-service.log" ;;
                tunnel) log="$logs/tunnel.log" ;;
                *) log="" ;;
            esac
            [[ -n "$log" ]] && show_log "$log"
            fail "${names[i]} (pid ${pids[i]}) exited unexpectedly"
        fi
    done
done
