#!/usr/bin/env python3
"""Benchmark driver for http-tunnel against direct access, rathole and bore.

Run through bench/run.sh, which installs the tools, builds the binaries and passes their paths
here. Everything runs on this machine, on loopback. See docs/benchmarks.md for what each workload
means.

Configurations (all started once, measured in turn, A B A B, for --rounds rounds):
  direct       load generator -> upstream
  http-tunnel  load generator -> tunnel-ingress -> NATS -> tunnel-session-host -> tunnel -> upstream
  rathole      load generator -> rathole server -> rathole client -> upstream
  bore         load generator -> bore server -> bore local -> upstream

Workloads:
  a  small response, 32 connections, keep-alive: req/s, p50/p99, CPU per request
  b  1 MiB response, 8 connections, keep-alive: req/s, MB/s, CPU per request
  c  one connection, sequential requests: p50/p99 and the latency added over direct
  d  1 GiB download and 1 GiB upload through one request (curl): MB/s, CPU per GiB;
     "not supported" when a configuration cannot carry it whole
  e  idle sessions: RSS of a fresh session-host with 0, 1, 1000 and 10000 idle sessions
  f  time from starting the tunnel client to the first request served through it
  g  a new TCP connection per request (Connection: close), 32 connections: req/s
  h  recording: (b) and (a) through two more http-tunnel clients, one started with --record,
     in alternating runs: req/s recording-on / recording-off; then `tunnel replay` of the
     recorded small exchanges straight to the upstream: replayed requests per second.
     Runs last, so the other workloads never see the RECORDINGS stream or the extra clients.
  i  admission: (a) and (c) through more http-tunnel clients in alternating runs: bench-open
     (no policy, no quota) through the bench's ingress (no rate limits), and bench-guarded (basic
     auth, allowed and denied networks, a required header, and a quota far above what a run
     sends) through a second ingress with rate limits per tunnel and per address set too high to
     refuse anything, the load generator sending the credentials and the header: req/s
     checks-on / checks-off, p50/p99, ingress CPU per request. Quotas follow the side: "on", the
     far-off limits are set and bench-blocked (no client) has a used-up limit, its exceeded state
     (from one audit record the harness publishes) in every ingress's mirror, so each request's
     quota check does its lookups; "off", no limit and no state anywhere (the check returns at
     once). In the same runs, bench-quota (quota only) through the bench's ingress, on against
     off in time: the quota figure (issue 11 asks >= 0.97x). Checks first that the guarded tunnel
     answers 401 without credentials, 403 without the header and 200 with both, that `tunnel
     admin quota list` shows the limits and bench-blocked's state, and that both ingresses answer
     bench-blocked 429 while on and not while off; fails if any run saw a non-2xx answer. Runs
     before (h).
  j  auditor throughput: --audit-records (200,000) audit records per round published straight
     into the AUDIT stream as the ingress writes them (MessagePack AuditBatch of --audit-batch
     (256) RequestAudit records per message on audit.<tunnel>.req, a Nats-Msg-Id each, at most
     64 unacknowledged; 4 tunnels of one account), counted by the bench's release
     tunnel-auditor: records/s from the first to the last record counted (polling its
     auditor_records_total every few ms), peak lag (records stored and not yet counted), peak
     auditor_consumer_pending, auditor CPU per record. Issue 11 asks >= 50,000 records/s.
     Runs after (i); alone: bench/run.sh --workloads j --configs http-tunnel.
  k  acknowledgement cost: (a) and (c) through two more session-hosts on the same NATS, each with
     a tunnel client, in alternating runs: one with TUNNEL_ACK_AFTER_MS=0 (the default: every
     request acknowledged at once, a Ping frame to the ingress), one with 250 (a request answered
     within 250 ms is never acknowledged): req/s on / off, p50/p99, CPU per request of the
     ingress and of the side's session-host, and NATS messages per request published by the
     host (nats-server /connz). Checks first that each host's start-up log shows its setting;
     fails if any run saw a non-2xx answer, or if "on" did not send about one message per
     request more than "off". Runs after (j), before (h).
  l  inspector cost: (a), (b) and (c) through two more tunnel clients on the bench's
     session-host in alternating runs, one with its local inspector on (--inspect-capacity
     10000, every exchange teed into its ring, bodies up to 1 MiB), one with --no-inspect: req/s
     on / off, p50/p99, client CPU per request. Before the runs, on fresh clients: each client's
     RSS and CPU over --inspect-idle-window (60) idle seconds, then its RSS after --inspect-fill
     (10,000) small sequential requests (the "on" ring then holds them all, checked through its
     API). Checks that only the "on" client reports an inspector; fails on any non-2xx answer.
     Runs after (k), before (h).
  m  encryption at rest: (b) and (a) through two recorded tunnels (--record), each on a stack of
     its own (a fresh nats-server, a session-host, an ingress with audit off, a client): one
     nats-server with JetStream's encryption at rest on (cipher chachapoly, key from $JS_KEY, as
     nats/dev.conf), one without, otherwise identical, in alternating runs: req/s encrypted /
     plain, p50/p99, CPU per request of nats-server and of the whole tunnel. Checks first that
     the encrypted server's log says "Encryption: ChaCha20-Poly1305" and the plain one's does
     not, and that both recorded; fails if any run saw a non-2xx answer. Runs after (k), before
     (h); alone: bench/run.sh --workloads m --configs http-tunnel.
  n  traces: (a) and (c) through two more stacks on the bench's NATS (a session-host, an ingress
     and a tunnel client each), in alternating runs: one exporting a span per request from all
     three (TUNNEL_OTLP_ENDPOINT, --otlp-endpoint) to an OTLP/HTTP sink in this harness, one with
     traces off: req/s on / off, p50/p99, CPU per request of the ingress, the session-host and the
     client (--trace-sample-ratio: the share of traces the "on" ingress keeps, 1 by default;
     the others follow its decision). Checks that the sink received exports from the "on" side; fails on any non-2xx
     answer. Runs after (m), before (h).

NATS and MessagePack are spoken by the small client below (class Nats, msgpack()), so the
harness needs no Python package beyond the standard library.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.server
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

CONFIGS = ["direct", "http-tunnel", "rathole", "bore"]
TUNNEL_NAME = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# (workload key, title, path, connections, threads, extra headers)
LOAD_WORKLOADS = {
    "a": ("small response, 32 conns, keep-alive", "/small", 32, 2, []),
    "b": ("1 MiB response, 8 conns, keep-alive", "/1m", 8, 2, []),
    "c": ("1 conn, sequential requests", "/small", 1, 1, []),
    "g": ("new TCP connection per request, 32 conns", "/small", 32, 2, ["Connection: close"]),
}

# (h): the load workloads measured with and without recording, in this order within a round:
# the 1 MiB runs first, so that the newest recordings of the recorded tunnel are small exchanges
# (the session-host keeps 1 GiB of recordings per tunnel, `record_max_bytes_per_tunnel`, and one
# (b) run records more than that: it purges the older ones).
RECORDING_WORKLOADS = ("b", "a")
# The two tunnels of (h), besides TUNNEL_NAME: the recorded one asks for it with --record.
RECORDED_TUNNEL = "bench-rec"
UNRECORDED_TUNNEL = "bench-norec"

# (i): the load workloads measured with the public-side checks on and off, in this order.
ADMISSION_WORKLOADS = ("a", "c")
# The two tunnels of (i): the open one has no policy and goes through the bench's ingress (no rate
# limits), the guarded one asks for every kind of rule and goes through a second ingress whose
# rate limits are on but too high to refuse anything at these rates.
OPEN_TUNNEL = "bench-open"
GUARDED_TUNNEL = "bench-guarded"
GUARD_USER, GUARD_PASSWORD = "bench", "bench-password"  # passwords are 8 bytes or more
GUARD_HEADER = ("X-Bench", "yes")
GUARD_POLICY = [
    "--basic-auth",
    f"{GUARD_USER}:{GUARD_PASSWORD}",
    "--allow-cidr",
    "127.0.0.0/8",
    "--deny-cidr",
    "10.0.0.0/8",
    "--require-header",
    f"{GUARD_HEADER[0]}: {GUARD_HEADER[1]}",
]
# Requests per second, and bursts, per tunnel and per address at the second ingress of (i).
ADMISSION_RATE_LIMIT = 10_000_000
# (i) quotas. "On": the guarded tunnel and QUOTA_TUNNEL get limits far above what a run sends
# (no state is ever written for them), and BLOCKED_TUNNEL (no client) a limit that one audit
# record, published by the harness, uses up: its exceeded state makes every ingress's quota
# mirror non-empty, so each request's check looks its tunnel up (with no state anywhere it
# returns at once). "Off": no limit set and no state. QUOTA_TUNNEL alone, on against off, is the
# quota figure: same tunnel, same ingress, same client, only the quotas differ.
QUOTA_TUNNEL = "bench-quota"
BLOCKED_TUNNEL = "bench-blocked"
HIGH_QUOTA = ["--requests-per-day", "1000000000", "--bytes-per-month", "1000000000000000"]
BLOCKED_QUOTA = ["--requests-per-day", "1"]

# (j): the tunnels and the account of the audit records published straight into AUDIT.
AUDIT_TUNNELS = ["bench-audit-0", "bench-audit-1", "bench-audit-2", "bench-audit-3"]
AUDIT_ACCOUNT = "bench-audit"

# (k): the load workloads measured with immediate and deferred acknowledgements, in this order.
ACK_WORKLOADS = ("a", "c")
# Per side: the session-host's `TUNNEL_ACK_AFTER_MS` and the tunnel of the client on it. "On"
# acknowledges every request at once (the default); "off" only requests still open after 250 ms,
# so none of the quick requests measured here.
ACK_SIDES = {"on": (0, "bench-ack-on"), "off": (250, "bench-ack-off")}

# (m): the load workloads measured with JetStream's encryption at rest on and off, in this order
# within a round (as (h): the large runs first). Per side: the recorded tunnel on that side's
# stack.
ENCRYPTION_WORKLOADS = ("b", "a")
ENCRYPTION_SIDES = {"on": "bench-enc-on", "off": "bench-enc-off"}
# (n): the load workloads through a traced and an untraced stack, and their tunnels.
TRACE_WORKLOADS = ("a", "c")
TRACE_SIDES = {"on": "bench-trace-on", "off": "bench-trace-off"}

# (l): the load workloads measured with the client's inspector on and off, in this order, and
# per side the tunnel and its client's flags ("on" keeps every exchange of the fill in its ring).
INSPECT_WORKLOADS = ("b", "a", "c")
INSPECT_SIDES = {
    "on": ("bench-insp-on", ["--inspect-addr", "127.0.0.1:0", "--inspect-capacity", "10000"]),
    "off": ("bench-insp-off", ["--no-inspect"]),
}

# The environment of every session-host the bench starts for load. RECORDINGS must fit this
# nats-server's max_file_store (4GB), or JetStream refuses the stream ("insufficient storage
# resources available", 10047) and the host drops every record (h). The default (2 GiB) fits;
# 3 GiB, set here, also holds one recorded tunnel at its record_max_bytes_per_tunnel (256 MiB)
# with room to spare, and matches the runs measured before the default changed. Anonymous,
# explicitly: the bench measures the data path, not admission (a token is checked once per
# session). Older commits ignore both settings.
HOST_ENV = {"TUNNEL_RECORD_MAX_BYTES": str(3 << 30), "TUNNEL_AUTH": "anonymous"}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# processes


class Procs:
    """Every process the benchmark starts, stopped in reverse order at the end."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], stdin=subprocess.DEVNULL, env: dict | None = None) -> subprocess.Popen:
        out = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=stdin,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
        out.close()
        self.started.append((name, proc))
        return proc

    def log_of(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def stop(self, proc: subprocess.Popen, grace: float = 5.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.started = [(n, p) for n, p in self.started if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.started)):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` (all threads), in seconds."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total / CLK_TCK


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (all CPUs), from /proc/stat, in seconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_for_quiet(threshold: float, patience: float) -> float:
    """Waits up to `patience` seconds for the 1-minute load average to fall below `threshold`."""
    deadline = time.monotonic() + patience
    load = load_average()
    if load >= threshold:
        log(f"load average {load:.2f} >= {threshold}: waiting up to {patience:.0f}s for a quieter machine")
    while load >= threshold and time.monotonic() < deadline:
        time.sleep(5)
        load = load_average()
    if load >= threshold:
        log(f"WARNING: load average still {load:.2f}: other work on this machine will skew the numbers")
    return load


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def http_status(url: str, host: str | None = None, timeout: float = 1.0, headers: dict | None = None) -> int | None:
    request = urllib.request.Request(url, headers={**({"Host": host} if host else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def send_sequential(target, path: str, count: int) -> int:
    """Sends `count` GETs of `path` to `target` one after the other on one keep-alive
    connection; returns how many did not answer 2xx."""
    import http.client

    host_port = target.base.split("://", 1)[1]
    conn = http.client.HTTPConnection(host_port, timeout=10)
    errors = 0
    for _ in range(count):
        try:
            conn.request("GET", path, headers={"Host": target.host} if target.host else {})
            response = conn.getresponse()
            response.read()
            errors += not 200 <= response.status < 300
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection(host_port, timeout=10)
    conn.close()
    return errors


def wait_until(what: str, check, timeout: float = 30.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f}s")


def wait_port(port: int, timeout: float = 30.0, proc=None) -> None:
    def check():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(f"port {port}", check, timeout, proc)


def first_line_matching(path: Path, pattern: str) -> str | None:
    try:
        for line in path.read_text(errors="replace").splitlines():
            if re.search(pattern, line):
                return line
    except FileNotFoundError:
        pass
    return None


# --------------------------------------------------------------------------------------------
# NATS and MessagePack, enough for (i) and (j): no third-party package needed


def msgpack(value) -> bytes:
    """MessagePack of `value` (None, bool, int >= 0, str, list, dict with str keys), as
    rmp_serde's struct-map encoding of the schemas expects (`tunnel_schemas::encode`)."""
    if value is None:
        return b"\xc0"
    if value is True or value is False:
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative integers are not needed here")
        if value < 0x80:
            return bytes([value])
        for tag, fmt in ((0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q")):
            try:
                return bytes([tag]) + struct.pack(fmt, value)
            except struct.error:
                continue
        raise ValueError(f"{value} does not fit a u64")
    if isinstance(value, str):
        raw = value.encode()
        n = len(raw)
        if n < 32:
            return bytes([0xA0 | n]) + raw
        if n < 256:
            return b"\xd9" + bytes([n]) + raw
        return (b"\xda" + struct.pack(">H", n) if n < 65536 else b"\xdb" + struct.pack(">I", n)) + raw
    if isinstance(value, (list, tuple)):
        n = len(value)
        head = bytes([0x90 | n]) if n < 16 else (b"\xdc" + struct.pack(">H", n) if n < 65536 else b"\xdd" + struct.pack(">I", n))
        return head + b"".join(msgpack(v) for v in value)
    if isinstance(value, dict):
        n = len(value)
        head = bytes([0x80 | n]) if n < 16 else (b"\xde" + struct.pack(">H", n) if n < 65536 else b"\xdf" + struct.pack(">I", n))
        return head + b"".join(msgpack(k) + msgpack(v) for k, v in value.items())
    raise TypeError(f"cannot encode {type(value).__name__}")


def audit_record(tunnel: str, request_id: str, at_ms: int, account: str | None = None) -> dict:
    """One `RequestAudit` (schemas/src/audit.rs) of a served `GET /small`, fields in order."""
    record = {
        "v": 1,
        "request_id": request_id,
        "tunnel": tunnel,
        "method": "GET",
        "path": "/small",
        "status": 200,
        "error": None,
        "bytes_in": 0,
        "bytes_out": 100,
        "duration_us": 250,
        "remote_addr": "127.0.0.1",
        "at_ms": at_ms,
    }
    if account is not None:
        record["account"] = account
    record["head_in"] = 80
    record["head_out"] = 120
    return record


class Nats:
    """A minimal NATS client over one socket (the core text protocol, headers included): publish
    with or without a reply subject, and requests. A reader thread answers PINGs and hands every
    message on our inbox to the waiter of its reply subject."""

    def __init__(self, url: str, name: str = "bench"):
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.settimeout(None)
        self.file = self.sock.makefile("rb", buffering=1 << 16)
        info = self.file.readline()
        if not info.startswith(b"INFO "):
            raise RuntimeError(f"nats: unexpected greeting {info[:80]!r}")
        self.write_lock = threading.Lock()
        self.cond = threading.Condition()
        self.replies: dict[str, bytes] = {}
        self.acks: dict[str, dict] = {}  # reply token -> JetStream publish ack
        self.error: str | None = None
        self.inbox = f"_INBOX.bench.{os.getpid()}{int(time.time() * 1000)}"
        self.next_id = 0
        self.closed = False
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "name": name, "lang": "python", "version": "0"}
        self.send(b"CONNECT " + json.dumps(connect).encode() + b"\r\n" + f"SUB {self.inbox}.* 1\r\n".encode())
        self.reader = threading.Thread(target=self.read_loop, daemon=True)
        self.reader.start()
        self.request("$JS.API.INFO", b"", timeout=10)  # connected, and JetStream answers

    def send(self, data: bytes) -> None:
        with self.write_lock:
            self.sock.sendall(data)

    def read_loop(self) -> None:
        f = self.file
        try:
            while True:
                line = f.readline()
                if not line:
                    raise OSError("connection closed")
                if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                    parts = line.split()
                    total = int(parts[-1])
                    data = f.read(total + 2)[:total]
                    if parts[0] == b"HMSG":
                        head = int(parts[-2])
                        headers, data = data[:head], data[head:]
                        if b" 503" in headers.split(b"\r\n", 1)[0]:
                            data = b'{"error":{"code":503,"description":"no responders"}}'
                    token = parts[1].decode().rsplit(".", 1)[1]
                    with self.cond:
                        if token.startswith("a"):
                            try:
                                self.acks[token] = json.loads(data)
                            except ValueError:
                                self.acks[token] = {"error": {"description": data[:200].decode(errors="replace")}}
                        else:
                            self.replies[token] = data
                        self.cond.notify_all()
                elif line.startswith(b"PING"):
                    self.send(b"PONG\r\n")
                elif line.startswith(b"-ERR"):
                    with self.cond:
                        self.error = line.decode(errors="replace").strip()
                        self.cond.notify_all()
        except (OSError, ValueError) as e:
            with self.cond:
                if not self.closed:
                    self.error = self.error or f"nats: {e}"
                self.cond.notify_all()

    def token(self, kind: str) -> str:
        with self.cond:
            self.next_id += 1
            return f"{kind}{self.next_id}"

    def pub(self, subject: str, payload: bytes, reply: str | None = None, headers: dict | None = None) -> None:
        r = f" {reply}" if reply else ""
        if headers:
            head = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
            self.send(f"HPUB {subject}{r} {len(head)} {len(head) + len(payload)}\r\n".encode() + head + payload + b"\r\n")
        else:
            self.send(f"PUB {subject}{r} {len(payload)}\r\n".encode() + payload + b"\r\n")

    def request(self, subject: str, payload: bytes, timeout: float = 5.0) -> bytes:
        token = self.token("r")
        self.pub(subject, payload, f"{self.inbox}.{token}")
        deadline = time.monotonic() + timeout
        with self.cond:
            while token not in self.replies:
                if self.error:
                    raise RuntimeError(self.error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"nats: no answer to {subject} in {timeout:.0f}s")
                self.cond.wait(left)
            return self.replies.pop(token)

    def js_publish(self, subject: str, payload: bytes, msg_id: str) -> str:
        """Publishes into a stream, asking for the ack; returns the token to wait for."""
        token = self.token("a")
        self.pub(subject, payload, f"{self.inbox}.{token}", {"Nats-Msg-Id": msg_id})
        return token

    def wait_acks(self, tokens: list[str], timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(t in self.acks for t in tokens):
                if self.error:
                    raise RuntimeError(self.error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"nats: {sum(t not in self.acks for t in tokens)} publish acks missing after {timeout:.0f}s")
                self.cond.wait(left)
            return [self.acks.pop(t) for t in tokens]

    def consumer_info(self, stream: str, consumer: str) -> dict:
        return json.loads(self.request(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", b""))

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def audit_batches(batches: list[tuple[str, list[dict]]]) -> list[tuple[str, bytes, int]]:
    """(tunnel, records) as the ingress publishes them: (tunnel, MessagePack `AuditBatch`, count)."""
    return [(tunnel, msgpack({"v": 1, "records": records}), len(records)) for tunnel, records in batches]


def publish_audit(nats: Nats, batches: list[tuple[str, bytes, int]], prefix: str, in_flight: int = 64, progress=None) -> None:
    """Publishes encoded `batches` (see `audit_batches`) into AUDIT, as the ingress does: one
    message per batch on `audit.<tunnel>.req` with a `Nats-Msg-Id`, at most `in_flight`
    unacknowledged. `progress(records)` is called with the records stored so far after each ack."""
    pending: list[tuple[str, int]] = []
    stored = 0

    def settle(keep: int) -> None:
        nonlocal stored
        while len(pending) > keep:
            token, n = pending.pop(0)
            (ack,) = nats.wait_acks([token])
            if "error" in ack:
                raise RuntimeError(f"AUDIT refused a batch: {ack['error']}")
            stored += n
            if progress:
                progress(stored)

    for i, (tunnel, payload, count) in enumerate(batches):
        pending.append((nats.js_publish(f"audit.{tunnel}.req", payload, f"{prefix}-{i}"), count))
        settle(in_flight)
    settle(0)


# --------------------------------------------------------------------------------------------
# the systems under test


class OtlpSink:
    """An OTLP/HTTP receiver that answers every export 200 and counts them and their bytes."""

    def __init__(self):
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the name http.server calls)
                size = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(size)
                sink.posts += 1
                sink.bytes += size
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.posts = 0
        self.bytes = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class Target:
    """One configuration: where to send requests, and which processes are its own."""

    def __init__(self, name: str, base: str, host: str | None, pids: dict[str, int]):
        self.name = name
        self.base = base
        self.host = host
        # The configuration's own processes, by role: their CPU time is charged to it.
        self.roles = pids
        self.pids = list(pids.values())


class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="http-tunnel-bench-"))
        self.procs = Procs(self.workdir)
        self.bin = Path(args.tunnel_bin_dir)
        self.tools = Path(args.bench_bin_dir)
        self.targets: dict[str, Target] = {}
        self.results: dict = {}

    # ---- start-up

    def start_upstream(self) -> None:
        proc = self.procs.start(
            "upstream", [str(self.tools / "bench-upstream"), "--threads", str(self.args.upstream_threads)]
        )
        line = wait_until(
            "upstream", lambda: first_line_matching(self.procs.log_of("upstream"), r"^listening "), 10, proc
        )
        self.upstream_port = int(line.rsplit(":", 1)[1])
        self.upstream_pid = proc.pid
        self.targets["direct"] = Target("direct", f"http://127.0.0.1:{self.upstream_port}", None, {})
        log(f"upstream on port {self.upstream_port}")

    def start_nats(self) -> None:
        # The monitoring endpoint: (k) reads the messages each connection sent from /connz.
        self.nats, self.nats_port, self.nats_monitor_port = self.start_nats_server("nats-server")
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        log(f"nats-server on port {self.nats_port} (max_payload 8MB)")

    def start_nats_server(self, name: str, encryption_key: str | None = None) -> tuple[subprocess.Popen, int, int]:
        """A nats-server `name` with its own store (log and files named after it), JetStream
        encrypted at rest with `encryption_key` when given (the key in its environment, as
        nats/dev.conf takes it). Returns it, its client port and its monitoring port."""
        port, monitor_port = free_port(), free_port()
        store = self.workdir / f"{name}-store"
        conf = self.workdir / f"{name}.conf"
        cipher = "  cipher: chachapoly\n  key: $JS_KEY\n" if encryption_key else ""
        # max_payload 8MB: before bodies were streamed in chunks (commit 510f163), a body travelled
        # inline in one NATS message, and a 1 MiB response plus its envelope does not fit the
        # default 1 MB; kept so that older commits can be measured with the same settings.
        conf.write_text(
            f"listen: 127.0.0.1:{port}\n"
            "max_payload: 8MB\n"
            "max_pending: 64MB\n"
            f"http: 127.0.0.1:{monitor_port}\n"
            f'jetstream {{\n  store_dir: "{store}"\n  max_memory_store: 256MB\n  max_file_store: 4GB\n{cipher}}}\n'
        )
        env = {"JS_KEY": encryption_key} if encryption_key else None
        proc = self.procs.start(name, [self.args.nats_server, "-c", str(conf)], env=env)
        wait_port(port, proc=proc)
        return proc, port, monitor_port

    def start_service(
        self, name: str, binary: str, extra: list[str], env: dict | None = None, nats_url: str | None = None
    ) -> tuple[subprocess.Popen, int]:
        port = free_port()
        proc = self.procs.start(
            name,
            [str(self.bin / binary), "--nats", nats_url or self.nats_url, "--listen", f"127.0.0.1:{port}", *extra],
            env=env,
        )
        wait_until(
            name, lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200, 60, proc
        )
        return proc, port

    def start_ingress(self, name: str, port: int, env: dict | None = None, nats_url: str | None = None) -> subprocess.Popen:
        proc = self.procs.start(
            name,
            [
                str(self.bin / "tunnel-ingress"),
                "--nats",
                nats_url or self.nats_url,
                "--listen",
                f"127.0.0.1:{port}",
                "--domain",
                "localhost",
            ],
            env=env,
        )
        wait_until(name, lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200, 60, proc)
        return proc

    def start_tunnel_client(
        self, name: str, log_name: str, extra: list[str] | None = None, env: dict | None = None, host_port: int | None = None
    ) -> subprocess.Popen:
        """A `tunnel http` client of the upstream named `name`, on the session-host at `host_port`
        (the bench's by default)."""
        return self.procs.start(
            log_name,
            [
                str(self.bin / "tunnel"),
                "http",
                str(self.upstream_port),
                "--server",
                f"ws://127.0.0.1:{host_port or self.host_port}",
                "--name",
                name,
                *(extra or []),
            ],
            env=env,
        )

    def start_side_client(
        self, name: str, host_port: int | None = None, roles: dict | None = None, extra: list[str] | None = None
    ) -> tuple[subprocess.Popen, Target]:
        """A tunnel client for `name` (log `tunnel-client-<name>`, its state in the run's
        directory) on the session-host at `host_port`, waited for until a request through the
        bench's ingress is served; and its Target, whose processes are the bench's http-tunnel
        ones with this client and `roles` instead."""
        log_name = f"tunnel-client-{name}"
        state_env = {"TUNNEL_STATE_DIR": str(self.workdir / "tunnel-state")}
        proc = self.start_tunnel_client(name, log_name, extra, state_env, host_port)
        wait_until(
            f"tunnel client {name}",
            lambda: first_line_matching(self.procs.log_of(log_name), r'"event":"ready"'),
            30,
            proc,
        )
        port = self.ingress_port
        host = f"{name}.localhost:{port}"
        wait_until(
            f"first request through {name}",
            lambda: http_status(f"http://127.0.0.1:{port}/small", host) == 200,
            30,
        )
        target_roles = {**self.targets["http-tunnel"].roles, **(roles or {}), "client": proc.pid}
        return proc, Target("http-tunnel", f"http://127.0.0.1:{port}", host, target_roles)

    def start_http_tunnel(self) -> None:
        self.auditor, self.auditor_port = self.start_service("tunnel-auditor", "tunnel-auditor", [])
        self.ingress_port = free_port()
        self.host, self.host_port = self.start_service(
            "tunnel-session-host",
            "tunnel-session-host",
            ["--public-url", f"http://{{name}}.localhost:{self.ingress_port}"],
            env=HOST_ENV,
        )
        port = self.ingress_port
        self.ingress = self.start_ingress("tunnel-ingress", port)
        self.client = self.start_tunnel_client(TUNNEL_NAME, "tunnel-client")
        ready = wait_until(
            "tunnel client",
            lambda: first_line_matching(self.procs.log_of("tunnel-client"), r'"event":"ready"'),
            30,
            self.client,
        )
        host = f"{TUNNEL_NAME}.localhost:{port}"
        wait_until(
            "first request through http-tunnel",
            lambda: http_status(f"http://127.0.0.1:{port}/small", host) == 200,
            30,
        )
        self.targets["http-tunnel"] = Target(
            "http-tunnel",
            f"http://127.0.0.1:{port}",
            host,
            {
                "ingress": self.ingress.pid,
                "nats-server": self.nats.pid,
                "session-host": self.host.pid,
                "client": self.client.pid,
            },
        )
        self.auditor_pid = self.auditor.pid
        log(f"http-tunnel up: {json.loads(ready).get('url')} (ingress port {port})")

    def start_rathole(self) -> None:
        control, service, start_service = free_port(), free_port(), free_port()
        self.rathole_start_port = start_service
        server = self.workdir / "rathole-server.toml"
        server.write_text(
            "[server]\n"
            f'bind_addr = "127.0.0.1:{control}"\n'
            "[server.services.bench]\n"
            'token = "bench-token"\n'
            f'bind_addr = "127.0.0.1:{service}"\n'
            "[server.services.start]\n"
            'token = "bench-token"\n'
            f'bind_addr = "127.0.0.1:{start_service}"\n'
        )
        for name, svc in (("bench", "rathole-client.toml"), ("start", "rathole-client-start.toml")):
            (self.workdir / svc).write_text(
                "[client]\n"
                f'remote_addr = "127.0.0.1:{control}"\n'
                f"[client.services.{name}]\n"
                'token = "bench-token"\n'
                f'local_addr = "127.0.0.1:{self.upstream_port}"\n'
            )
        rathole = self.args.rathole
        s = self.procs.start("rathole-server", [rathole, "-s", str(server)])
        wait_port(control, proc=s)
        c = self.procs.start("rathole-client", [rathole, "-c", str(self.workdir / "rathole-client.toml")])
        wait_until(
            "rathole", lambda: http_status(f"http://127.0.0.1:{service}/small") == 200, 30, c
        )
        self.targets["rathole"] = Target("rathole", f"http://127.0.0.1:{service}", None, {"server": s.pid, "client": c.pid})
        log(f"rathole up on port {service}")

    def start_bore(self) -> None:
        # bore's control port is fixed at 7835; the tunnel ports come from a narrow range.
        self.bore_port, self.bore_start_port = free_port(), free_port()
        bore = self.args.bore
        lo, hi = sorted((self.bore_port, self.bore_start_port))
        s = self.procs.start(
            "bore-server",
            [bore, "server", "--bind-addr", "127.0.0.1", "--min-port", str(lo), "--max-port", str(hi)],
        )
        wait_port(7835, proc=s)
        c = self.procs.start(
            "bore-client",
            [bore, "local", str(self.upstream_port), "-l", "127.0.0.1", "--to", "127.0.0.1", "--port", str(self.bore_port)],
        )
        wait_until(
            "bore", lambda: http_status(f"http://127.0.0.1:{self.bore_port}/small") == 200, 30, c
        )
        self.targets["bore"] = Target("bore", f"http://127.0.0.1:{self.bore_port}", None, {"server": s.pid, "client": c.pid})
        log(f"bore up on port {self.bore_port}")

    # ---- load generation

    def load(self, target: Target, path: str, conns: int, threads: int, headers: list[str], duration: float) -> dict:
        hdrs = list(headers)
        if target.host:
            hdrs.append(f"Host: {target.host}")
        url = target.base + path
        if self.args.loadgen == "wrk":
            argv = [self.args.wrk, f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "10s"]
            for h in hdrs:
                argv += ["-H", h]
            argv.append(url)
        else:
            argv = [self.args.oha, "--no-tui", "--output-format", "json", "-z", f"{duration}s", "-c", str(conns), "-t", "10s"]
            for h in hdrs:
                if h.lower() == "connection: close":
                    argv.append("--disable-keepalive")
                else:
                    argv += ["-H", h]
            argv.append(url)
        roles = dict(target.roles)
        if target.name == "http-tunnel":
            roles["auditor"] = self.auditor_pid  # reported apart: not in the brief's sum
        ours = self.all_pids()
        ours_before, busy_before, kids_before = cpu_seconds(ours), busy_seconds(), children_cpu_seconds()
        before = {role: cpu_seconds([pid]) for role, pid in roles.items()}
        t0 = time.monotonic()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        elapsed = time.monotonic() - t0
        after = {role: cpu_seconds([pid]) for role, pid in roles.items()}
        ours_used = cpu_seconds(ours) - ours_before + children_cpu_seconds() - kids_before
        foreign = (busy_seconds() - busy_before - ours_used) / elapsed
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed: {out.stderr.strip() or out.stdout.strip()}")
        result = parse_wrk(out.stdout) if self.args.loadgen == "wrk" else parse_oha(out.stdout)
        # CPU (in cores) that processes outside this benchmark used during the run.
        result["foreign_cpu_cores"] = max(0.0, foreign)
        done = result["requests"]
        if done:
            per_role = {role: (after[role] - before[role]) * 1e6 / done for role in roles}
            for role, us in per_role.items():
                result[f"cpu_us_per_req.{role}"] = us
            if target.pids:
                result["cpu_us_per_req"] = sum(per_role[r] for r in target.roles)
        return result

    def all_pids(self) -> list[int]:
        pids = [self.upstream_pid] + [p for t in self.targets.values() for p in t.pids]
        pids += getattr(self, "extra_pids", [])  # the tunnel clients of (h), while they run
        if getattr(self, "auditor_pid", None):
            pids.append(self.auditor_pid)
        return sorted(set(pids))

    def warm_up(self) -> None:
        for name, target in self.targets.items():
            for key in self.args.workloads:
                if key in LOAD_WORKLOADS:
                    _, path, conns, threads, headers = LOAD_WORKLOADS[key]
                    self.load(target, path, conns, threads, headers, 1)
        log("warm-up done")

    def run_load_workloads(self) -> None:
        keys = [k for k in self.args.workloads if k in LOAD_WORKLOADS]
        runs = {k: {c: [] for c in self.targets} for k in keys}
        for r in range(self.args.rounds):
            for key in keys:
                title, path, conns, threads, headers = LOAD_WORKLOADS[key]
                for name, target in self.targets.items():  # A B A B: configs alternate
                    result = self.load(target, path, conns, threads, headers, self.args.duration)
                    runs[key][name].append(result)
                    bad = result.get("errors", 0) + result.get("non_2xx", 0)
                    log(
                        f"round {r + 1}/{self.args.rounds} ({key}) {name:12} "
                        f"{result['rps']:>9.0f} req/s  p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms"
                        + (f"  cpu {result['cpu_us_per_req']:.0f} us/req" if "cpu_us_per_req" in result else "")
                        + f"  other load {result['foreign_cpu_cores']:.2f} cores"
                        + (f"  ERRORS {bad}" if bad else "")
                    )
        for key in keys:
            self.results[key] = {
                "title": LOAD_WORKLOADS[key][0],
                "runs": runs[key],
                "median": {name: median_of(rs) for name, rs in runs[key].items()},
            }

    # ---- (d) big transfers

    def run_big(self) -> None:
        big = self.workdir / "1g.bin"
        with open(big, "wb") as f:
            f.truncate(1 << 30)  # sparse: reads cost no disk
        out: dict = {"download": {}, "upload": {}}
        for name, target in self.targets.items():
            for kind in ("download", "upload"):
                rates, cpus = [], []
                for _ in range(self.args.big_rounds):
                    url = target.base + ("/1g" if kind == "download" else "/upload")
                    reply = self.workdir / "upload-reply.txt"
                    reply.unlink(missing_ok=True)
                    sink = "/dev/null" if kind == "download" else str(reply)
                    argv = ["curl", "-sS", "-o", sink, "--max-time", str(self.args.big_timeout)]
                    if target.host:
                        argv += ["-H", f"Host: {target.host}"]
                    if kind == "download":
                        argv += ["-w", "%{http_code} %{speed_download} %{size_download}", url]
                    else:
                        argv += ["-T", str(big), "-H", "Expect:", "-w", "%{http_code} %{speed_upload} %{size_upload}", url]
                    before = cpu_seconds(target.pids) if target.pids else 0
                    res = subprocess.run(argv, capture_output=True, text=True, timeout=self.args.big_timeout + 30)
                    after = cpu_seconds(target.pids) if target.pids else 0
                    code, speed, size = (res.stdout.split() + ["000", "0", "0"])[:3]
                    # An upload is only complete when the upstream says it read every byte.
                    if kind == "upload" and code == "200":
                        # What the upstream read, not what curl sent.
                        got = reply.read_text().split() if reply.exists() else []
                        size = got[1] if len(got) == 2 and got[0] == "received" else "0"
                    if code != "200" or int(float(size)) != 1 << 30:
                        why = f"HTTP {code}, {int(float(size))} bytes, {res.stderr.strip()[:80]}".rstrip(", ")
                        rates = []
                        out[kind][name] = f"not supported ({why})"
                        log(f"(d) {kind:8} {name:12} not supported: {why}")
                        break
                    rates.append(float(speed) / 1e6)
                    if target.pids:
                        cpus.append(after - before)
                if not rates:
                    continue
                out[kind][name] = {
                    "mb_per_s": statistics.median(rates),
                    "runs_mb_per_s": rates,
                    **({"cpu_s_per_gib": statistics.median(cpus)} if cpus else {}),
                }
                log(f"(d) {kind:8} {name:12} {statistics.median(rates):8.0f} MB/s")
        big.unlink()
        self.results["d"] = {"title": "1 GiB through one request", **out}

    # ---- (e) idle sessions

    def run_idle(self) -> None:
        counts = self.args.idle_counts
        host, port = self.start_service(
            "tunnel-session-host-idle",
            "tunnel-session-host",
            ["--public-url", "http://{name}.localhost:1"],
            # Anonymous, explicitly: the idle sessions present no token.
            env={"TUNNEL_NODE_ID": "idle", "TUNNEL_AUTH": "anonymous"},
        )
        time.sleep(1)
        steps = [{"sessions": 0, "host_rss_kib": rss_kib(host.pid), "nats_rss_kib": rss_kib(self.nats.pid)}]
        idle = self.procs.start(
            "idle-sessions",
            [str(self.tools / "idle-sessions"), "--url", f"ws://127.0.0.1:{port}/v1/connect"],
            stdin=subprocess.PIPE,
        )
        logf = self.procs.log_of("idle-sessions")
        seen = 0
        total = 0
        try:
            for count in counts:
                idle.stdin.write(f"open {count - total}\n".encode())
                idle.stdin.flush()
                seen += 1
                line = wait_until(
                    f"{count} idle sessions",
                    lambda: (lambda lines: lines[seen - 1] if len(lines) >= seen else None)(
                        [l for l in logf.read_text().splitlines() if l.startswith("{")]
                    ),
                    600,
                    idle,
                )
                report = json.loads(line)
                total = count
                time.sleep(self.args.idle_settle)
                step = {
                    "sessions": report["open"],
                    "requested": count,
                    "failed": report["failed"],
                    "open_ms": report["ms"],
                    "first_error": report["error"],
                    "host_rss_kib": rss_kib(host.pid),
                    "nats_rss_kib": rss_kib(self.nats.pid),
                }
                if count == counts[-1]:
                    window = self.args.idle_cpu_window
                    h0, n0 = cpu_seconds([host.pid]), cpu_seconds([self.nats.pid])
                    time.sleep(window)
                    h1, n1 = cpu_seconds([host.pid]), cpu_seconds([self.nats.pid])
                    step["idle_host_cpu_pct"] = (h1 - h0) * 100 / window
                    step["idle_nats_cpu_pct"] = (n1 - n0) * 100 / window
                    step["host_rss_kib"] = rss_kib(host.pid)
                    step["nats_rss_kib"] = rss_kib(self.nats.pid)
                steps.append(step)
                log(
                    f"(e) {report['open']:>6} idle sessions (failed {report['failed']}, {report['ms']} ms to open): "
                    f"session-host RSS {step['host_rss_kib'] / 1024:.1f} MiB, nats-server RSS {step['nats_rss_kib'] / 1024:.1f} MiB"
                )
        finally:
            try:
                idle.stdin.write(b"quit\n")
                idle.stdin.close()
            except OSError:
                pass
            self.procs.stop(idle)
            self.procs.stop(host, grace=15)
        self.results["e"] = {"title": "idle tunnel sessions", "steps": steps}

    # ---- (f) start-up time

    def run_startup(self) -> None:
        out: dict = {}
        for r in range(self.args.rounds):
            for name in self.targets:
                if name == "direct":
                    continue
                t = self.startup_once(name, r)
                out.setdefault(name, []).append(t)
                log(f"(f) round {r + 1} {name:12} first request served after {t * 1000:.0f} ms")
        self.results["f"] = {
            "title": "client start to first request served",
            "runs_ms": {k: [v * 1000 for v in vs] for k, vs in out.items()},
            "median_ms": {k: statistics.median(vs) * 1000 for k, vs in out.items()},
        }

    def startup_once(self, name: str, r: int) -> float:
        if name == "http-tunnel":
            tunnel = f"bench-start-{r}"
            url = f"http://127.0.0.1:{self.ingress_port}/small"
            host = f"{tunnel}.localhost:{self.ingress_port}"
            t0 = time.monotonic()
            proc = self.start_tunnel_client(tunnel, f"tunnel-client-start-{r}")
        elif name == "rathole":
            url, host = f"http://127.0.0.1:{self.rathole_start_port}/small", None
            t0 = time.monotonic()
            proc = self.procs.start(
                f"rathole-client-start-{r}",
                [self.args.rathole, "-c", str(self.workdir / "rathole-client-start.toml")],
            )
        else:
            url, host = f"http://127.0.0.1:{self.bore_start_port}/small", None
            t0 = time.monotonic()
            proc = self.procs.start(
                f"bore-client-start-{r}",
                [self.args.bore, "local", str(self.upstream_port), "-l", "127.0.0.1", "--to", "127.0.0.1", "--port", str(self.bore_start_port)],
            )
        try:
            deadline = t0 + 30
            while time.monotonic() < deadline:
                if http_status(url, host, timeout=1.0) == 200:
                    return time.monotonic() - t0
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} client exited during the start-up test")
                time.sleep(0.002)
            raise RuntimeError(f"{name}: no request served within 30 s of the client's start")
        finally:
            self.procs.stop(proc)
            # The freed port or name must be free again before the next round.
            time.sleep(0.5)

    # ---- (i) admission: rate limits and policies

    def run_admission(self) -> None:
        """(a) and (c) through a tunnel with a policy and a quota behind an ingress with rate
        limits, and through one without any, in alternating runs; and through one tunnel with its
        quota on and off in time (the quota figure)."""
        # The second ingress: same nats-server, its own node id, rate limits on per tunnel and
        # per address, set so high that nothing is refused (each still checked per request).
        limit = str(ADMISSION_RATE_LIMIT)
        limits_env = {
            "TUNNEL_NODE_ID": "ing2",
            "TUNNEL_RATE_LIMIT_PER_TUNNEL": limit,
            "TUNNEL_RATE_BURST_PER_TUNNEL": limit,
            "TUNNEL_RATE_LIMIT_PER_IP": limit,
            "TUNNEL_RATE_BURST_PER_IP": limit,
        }
        state_env = {"TUNNEL_STATE_DIR": str(self.workdir / "tunnel-state")}
        guard_auth = "Basic " + base64.b64encode(f"{GUARD_USER}:{GUARD_PASSWORD}".encode()).decode()
        guard_headers = {"Authorization": guard_auth, GUARD_HEADER[0]: GUARD_HEADER[1]}
        started: list[subprocess.Popen] = []
        try:
            guarded_port = free_port()
            ingress2 = self.start_ingress("tunnel-ingress-limits", guarded_port, limits_env)
            started.append(ingress2)
            # The ingress logs its settings when it starts: the limits must be the ones asked for
            # (an ingress that ignored the variables would measure the policy alone).
            for key in ("rate_limit_per_tunnel", "rate_burst_per_tunnel", "rate_limit_per_ip", "rate_burst_per_ip"):
                if not first_line_matching(self.procs.log_of("tunnel-ingress-limits"), rf"\b{key}: {limit}\b"):
                    raise RuntimeError(f"(i) the second ingress does not report {key} = {limit} in its start-up log")
            self.quota_ports = [self.ingress_port, guarded_port]
            # The used-up quota of a tunnel with no client: one served request counted today.
            nats = Nats(self.nats_url, "bench-admission")
            try:
                now = int(time.time() * 1000)
                publish_audit(
                    nats, audit_batches([(BLOCKED_TUNNEL, [audit_record(BLOCKED_TUNNEL, f"bench-blocked-{now}", now)])]), f"bench-blocked-{now}"
                )
            finally:
                nats.close()
            self.set_quotas(False)  # from a clean slate
            sides = {
                "on": (GUARDED_TUNNEL, GUARD_POLICY, guarded_port, ingress2.pid, guard_headers),
                "off": (OPEN_TUNNEL, [], self.ingress_port, self.ingress.pid, {}),
                # The quota figure: one tunnel, through the bench's ingress, measured on and off.
                "quota": (QUOTA_TUNNEL, [], self.ingress_port, self.ingress.pid, {}),
            }
            clients: dict[str, Target] = {}
            extra_headers: dict[str, list[str]] = {}
            for side, (name, extra, port, ingress_pid, headers) in sides.items():
                log_name = f"tunnel-client-{name}"
                proc = self.start_tunnel_client(name, log_name, extra, state_env)
                started.append(proc)
                wait_until(
                    f"tunnel client {name}",
                    lambda: first_line_matching(self.procs.log_of(log_name), r'"event":"ready"'),
                    30,
                    proc,
                )
                host = f"{name}.localhost:{port}"
                url = f"http://127.0.0.1:{port}/small"
                wait_until(
                    f"first request through {name}",
                    lambda: http_status(url, host, headers=headers) == 200,
                    30,
                )
                roles = dict(self.targets["http-tunnel"].roles, ingress=ingress_pid, client=proc.pid)
                clients[side] = Target("http-tunnel", f"http://127.0.0.1:{port}", host, roles)
                extra_headers[side] = [f"{k}: {v}" for k, v in headers.items()]
            self.extra_pids = [p.pid for p in started]
            # (run, side) -> the tunnel measured and its headers.
            runs_of = {
                ("i", "on"): (clients["on"], extra_headers["on"]),
                ("i", "off"): (clients["off"], extra_headers["off"]),
                ("q", "on"): (clients["quota"], []),
                ("q", "off"): (clients["quota"], []),
            }
            # The guarded tunnel must refuse what its policy refuses, or "on" measures nothing.
            host, url = clients["on"].host, f"{clients['on'].base}/small"
            wrong = "Basic " + base64.b64encode(f"{GUARD_USER}:not-the-password".encode()).decode()
            checks = {
                "without credentials": (dict(guard_headers, Authorization=None), 401),
                "with a wrong password": (dict(guard_headers, Authorization=wrong), 401),
                f"without {GUARD_HEADER[0]}": (dict(guard_headers, **{GUARD_HEADER[0]: None}), 403),
                "with both": (guard_headers, 200),
            }
            statuses = {}
            for what, (headers, want) in checks.items():
                got = http_status(url, host, timeout=5, headers={k: v for k, v in headers.items() if v is not None})
                statuses[what] = got
                if got != want:
                    raise RuntimeError(f"(i) {GUARDED_TUNNEL} {what}: HTTP {got}, expected {want}")
            log(f"(i) {GUARDED_TUNNEL} answers " + ", ".join(f"{v} {k}" for k, v in statuses.items()))
            # The quotas must be what "on" claims: limits listed, the state in every ingress.
            quota_checks = self.set_quotas(True)
            listed = {e["scope"]: e for e in self.admin("quota", "list")}
            quota_checks["quota list"] = {k: {"limits": v.get("limits"), "state": v.get("state")} for k, v in listed.items()}
            for name in (GUARDED_TUNNEL, QUOTA_TUNNEL, BLOCKED_TUNNEL):
                if f"t.{name}" not in listed:
                    raise RuntimeError(f"(i) `tunnel admin quota list` does not list t.{name}: {sorted(listed)}")
            if (listed[f"t.{BLOCKED_TUNNEL}"].get("state") or {}).get("level") != "exceeded":
                raise RuntimeError(f"(i) t.{BLOCKED_TUNNEL} has no exceeded state: {listed[f't.{BLOCKED_TUNNEL}']}")
            for name in (GUARDED_TUNNEL, QUOTA_TUNNEL):
                if listed[f"t.{name}"].get("state"):
                    raise RuntimeError(f"(i) t.{name} has a quota state, its limits must be far off: {listed[f't.{name}']}")
            log(f"(i) quotas on: {', '.join(sorted(listed))} listed, t.{BLOCKED_TUNNEL} exceeded (429 at both ingresses)")
            for key in ADMISSION_WORKLOADS:
                _, path, conns, threads, headers = LOAD_WORKLOADS[key]
                for (_, side), (target, extra) in runs_of.items():
                    self.set_quotas(side == "on")
                    self.load(target, path, conns, threads, headers + extra, 1)
            log("(i) warm-up done")
            runs = {run: {key: {"on": [], "off": []} for key in ADMISSION_WORKLOADS} for run in ("i", "q")}
            for r in range(self.args.rounds):
                # on off, then off on: neither side always runs first.
                order = ("on", "off") if r % 2 == 0 else ("off", "on")
                for key in ADMISSION_WORKLOADS:
                    _, path, conns, threads, headers = LOAD_WORKLOADS[key]
                    for side in order:
                        # The quotas follow the side: on, limits set and a state in every ingress;
                        # off, no limit and no state anywhere (the checks return at once).
                        self.set_quotas(side == "on")
                        for run in ("i", "q"):
                            target, extra = runs_of[(run, side)]
                            result = self.load(target, path, conns, threads, headers + extra, self.args.duration)
                            runs[run][key][side].append(result)
                            bad = result.get("errors", 0) + result.get("non_2xx", 0)
                            what = f"checks {side:3}" if run == "i" else f"quota  {side:3}"
                            log(
                                f"round {r + 1}/{self.args.rounds} (i{key}) {what} "
                                f"{result['rps']:>9.0f} req/s  p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms"
                                f"  cpu {result.get('cpu_us_per_req', 0):.0f} us/req"
                                f" (ingress {result.get('cpu_us_per_req.ingress', 0):.1f})"
                                f"  other load {result['foreign_cpu_cores']:.2f} cores"
                                + (f"  ERRORS {bad}" if bad else "")
                            )
            self.set_quotas(False)
        finally:
            for proc in reversed(started):
                self.procs.stop(proc)
            self.extra_pids = []
        workloads = on_off_summary(ADMISSION_WORKLOADS, runs["i"])
        self.results["i"] = {
            "title": "admission: rate limits, policies and quotas on / off",
            "tunnels": {"on": GUARDED_TUNNEL, "off": OPEN_TUNNEL},
            "policy": [a.replace(GUARD_PASSWORD, "***") for a in GUARD_POLICY],
            "rate_limits": {"per_tunnel": ADMISSION_RATE_LIMIT, "per_ip": ADMISSION_RATE_LIMIT},
            "quotas_on": {GUARDED_TUNNEL: HIGH_QUOTA, QUOTA_TUNNEL: HIGH_QUOTA, BLOCKED_TUNNEL: BLOCKED_QUOTA},
            "checks": statuses,
            "quota_checks": quota_checks,
            "workloads": workloads,
            "quota": {"tunnel": QUOTA_TUNNEL, "workloads": on_off_summary(ADMISSION_WORKLOADS, runs["q"])},
        }
        bad = {
            f"({run}{key}) {side} round {n + 1}": f"{r.get('non_2xx', 0)} non-2xx, {r.get('errors', 0)} errors"
            for run in ("i", "q")
            for key, w in runs[run].items()
            for side, rs in w.items()
            for n, r in enumerate(rs)
            if r.get("non_2xx", 0) or r.get("errors", 0)
        }
        if bad:
            self.results["i"]["error"] = "runs with non-2xx answers or socket errors: " + "; ".join(f"{k}: {v}" for k, v in bad.items())
            raise RuntimeError(self.results["i"]["error"])

    def admin(self, *argv: str) -> list[dict]:
        """`tunnel admin --nats <bench's nats> ...`, its JSON lines."""
        out = subprocess.run(
            [str(self.bin / "tunnel"), "admin", "--nats", self.nats_url, *argv], capture_output=True, text=True, timeout=30
        )
        if out.returncode != 0:
            raise RuntimeError(f"tunnel admin {' '.join(argv)}: exit {out.returncode}: {(out.stderr or out.stdout).strip()[-300:]}")
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    def set_quotas(self, on: bool) -> dict:
        """(i) quotas on: the far-off limits of the guarded and the quota tunnel, and the used-up
        one of BLOCKED_TUNNEL, whose exceeded state every ingress must show (429) before this
        returns; off: no limit set and no state (BLOCKED_TUNNEL no longer 429 anywhere)."""
        if getattr(self, "quotas_on", None) == on:
            return {}
        t0 = time.monotonic()
        if on:
            for name in (GUARDED_TUNNEL, QUOTA_TUNNEL):
                self.admin("quota", "set", name, *HIGH_QUOTA)
            self.admin("quota", "set", BLOCKED_TUNNEL, *BLOCKED_QUOTA)
        else:
            for entry in self.admin("quota", "list"):
                self.admin("quota", "remove", entry["scope"].removeprefix("t."))
        checks = {}
        for port in self.quota_ports:
            host = f"{BLOCKED_TUNNEL}.localhost:{port}"
            status = wait_until(
                f"{BLOCKED_TUNNEL} {'refused' if on else 'no longer refused'} for its quota at port {port}",
                lambda: (lambda s: s if (s == 429) == on else None)(http_status(f"http://127.0.0.1:{port}/small", host)),
                10,
            )
            checks[f"{BLOCKED_TUNNEL} at the ingress on port {port}"] = status
        self.quotas_on = on
        self.quota_toggles = getattr(self, "quota_toggles", 0) + 1
        checks["seconds to take effect"] = round(time.monotonic() - t0, 3)
        return checks

    # ---- (j) auditor throughput

    def auditor_metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.auditor_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("auditor_"):
                name = re.split(r"[{\s]", line, maxsplit=1)[0]
                out[name] = out.get(name, 0.0) + float(line.split()[-1])
        return out

    def run_auditor_throughput(self) -> None:
        """(j): AUDIT_RECORDS audit records published straight into the AUDIT stream, in batches
        as the ingress writes them, counted by the bench's tunnel-auditor (release): records/s
        from the first to the last record counted, and the consumer lag."""
        total, per_batch = self.args.audit_records, self.args.audit_batch
        nats = Nats(self.nats_url, "bench-audit")
        rounds = []
        try:
            # Whatever the other workloads left in the stream is counted first.
            wait_until("the auditor idle before (j)", lambda: self.auditor_idle(nats), 120)
            for r in range(self.args.rounds):
                rounds.append(self.auditor_round(nats, r, total, per_batch))
        finally:
            nats.close()
        rates = [x["records_per_s"] for x in rounds]
        self.results["j"] = {
            "title": "auditor throughput",
            "records_per_round": total,
            "records_per_batch": per_batch,
            "tunnels": AUDIT_TUNNELS,
            "rounds": rounds,
            "records_per_s": statistics.median(rates),
            "records_per_s_min": min(rates),
            "end_to_end_records_per_s": statistics.median(x["end_to_end_records_per_s"] for x in rounds),
            "peak_lag_records": max(x["peak_lag_records"] for x in rounds),
            "peak_consumer_pending_metric": max(x["peak_consumer_pending_metric"] for x in rounds),
            "peak_consumer_pending_messages": max(x["peak_consumer_pending_messages"] for x in rounds),
            "auditor_cpu_us_per_record": statistics.median(x["auditor_cpu_us_per_record"] for x in rounds),
        }

    def auditor_idle(self, nats: Nats) -> bool:
        info = nats.consumer_info("AUDIT", "auditor")
        return info.get("num_pending", 1) == 0 and info.get("num_ack_pending", 1) == 0

    def auditor_round(self, nats: Nats, r: int, total: int, per_batch: int) -> dict:
        now = int(time.time() * 1000)
        run_id = f"j{now}-{r}"
        batches = []
        for b, start in enumerate(range(0, total, per_batch)):
            tunnel = AUDIT_TUNNELS[b % len(AUDIT_TUNNELS)]
            records = [audit_record(tunnel, f"{run_id}-{i}", now, AUDIT_ACCOUNT) for i in range(start, min(start + per_batch, total))]
            batches.append((tunnel, records))
        batches = audit_batches(batches)  # encoded before the clock starts: Python is slower than the auditor
        base = self.auditor_metrics().get("auditor_records_total", 0.0)
        samples: list[tuple[float, float, float, float]] = []  # time, counted, stored, pending gauge
        consumer_pending: list[int] = []
        stored = [0]
        done = threading.Event()
        failed: list[str] = []

        def poll() -> None:
            info_every, next_info = 0.05, 0.0
            try:
                while not done.is_set():
                    t = time.monotonic()
                    m = self.auditor_metrics()
                    samples.append((t, m.get("auditor_records_total", 0.0) - base, stored[0], m.get("auditor_consumer_pending", 0.0)))
                    if t >= next_info:
                        consumer_pending.append(nats.consumer_info("AUDIT", "auditor").get("num_pending", 0))
                        next_info = t + info_every
                    if samples[-1][1] >= total:
                        return
                    time.sleep(0.005)
            except (OSError, RuntimeError, ValueError) as e:
                failed.append(str(e))

        poller = threading.Thread(target=poll, daemon=True)
        cpu0 = {"auditor": cpu_seconds([self.auditor_pid]), "nats-server": cpu_seconds([self.nats.pid])}
        t_pub = time.monotonic()
        poller.start()
        try:
            publish_audit(nats, batches, run_id, progress=lambda n: stored.__setitem__(0, n))
            t_stored = time.monotonic()
            poller.join(timeout=120)
        finally:
            done.set()
        if failed or not samples or samples[-1][1] < total:
            raise RuntimeError(
                f"(j) round {r + 1}: the auditor counted {samples[-1][1] if samples else 0:.0f} of {total} records"
                + (f" ({failed[0]})" if failed else "")
            )
        cpu = {k: v - cpu0[k] for k, v in {"auditor": cpu_seconds([self.auditor_pid]), "nats-server": cpu_seconds([self.nats.pid])}.items()}
        first = next(s for s in samples if s[1] > 0)
        last = next(s for s in samples if s[1] >= total)
        span = last[0] - first[0]
        result = {
            # Counted between the first poll that saw a record counted and the first that saw all.
            "records_per_s": (last[1] - first[1]) / span if span > 0 else float("inf"),
            "first_to_last_s": span,
            # From the first publish to the last record counted, publishing included.
            "end_to_end_records_per_s": total / (last[0] - t_pub),
            "publish_s": t_stored - t_pub,
            "published_records_per_s": total / (t_stored - t_pub),
            # Records stored in the stream and not yet counted, at the worst poll.
            "peak_lag_records": max(s[2] - s[1] for s in samples),
            # The auditor's own gauge (messages, read by it every 2 s) and the consumer's info (messages).
            "peak_consumer_pending_metric": max(s[3] for s in samples),
            "peak_consumer_pending_messages": max(consumer_pending, default=0),
            "polls": len(samples),
            "auditor_cpu_s": cpu["auditor"],
            "auditor_cpu_us_per_record": cpu["auditor"] * 1e6 / total,
            "nats_cpu_s": cpu["nats-server"],
        }
        log(
            f"(j) round {r + 1}/{self.args.rounds}: {total:,} records ({len(batches)} batches) stored in {result['publish_s']:.2f} s, "
            f"counted at {result['records_per_s']:,.0f} records/s ({result['first_to_last_s']:.2f} s first to last; "
            f"{result['end_to_end_records_per_s']:,.0f}/s from the first publish), peak lag {result['peak_lag_records']:,.0f} records "
            f"(auditor_consumer_pending peak {result['peak_consumer_pending_metric']:.0f} messages), "
            f"auditor {result['auditor_cpu_us_per_record']:.2f} CPU-us per record"
        )
        return result

    # ---- (k) acknowledgement cost

    def nats_messages_sent(self) -> dict[str, int]:
        """Messages each NATS connection has published (nats-server's `in_msgs`), by connection
        name (`session-host-<node>`, `ingress-<node>`; connections of one name summed)."""
        url = f"http://127.0.0.1:{self.nats_monitor_port}/connz?limit=100000"
        with urllib.request.urlopen(url, timeout=5) as response:
            conns = json.loads(response.read())["connections"]
        out: dict[str, int] = {}
        for c in conns:
            out[c.get("name", "")] = out.get(c.get("name", ""), 0) + c["in_msgs"]
        return out

    def run_ack_cost(self) -> None:
        """(a) and (c) through two more session-hosts, one acknowledging every request at once
        and one only requests still open after 250 ms, in alternating runs."""
        started: list[subprocess.Popen] = []
        targets: dict[str, Target] = {}
        nats_names: dict[str, str] = {}
        settings: dict[str, str] = {}
        try:
            for side, (ack_after_ms, tunnel) in ACK_SIDES.items():
                node = f"ack-{side}"
                log_name = f"tunnel-session-host-{node}"
                host, host_port = self.start_service(
                    log_name,
                    "tunnel-session-host",
                    ["--public-url", f"http://{{name}}.localhost:{self.ingress_port}"],
                    env={**HOST_ENV, "TUNNEL_NODE_ID": node, "TUNNEL_ACK_AFTER_MS": str(ack_after_ms)},
                )
                started.append(host)
                # The host logs its settings when it starts: the setting must be the one asked for
                # (a host that ignored the variable would measure the default on both sides).
                line = first_line_matching(self.procs.log_of(log_name), rf"\back_after_ms: {ack_after_ms}\b")
                if not line:
                    raise RuntimeError(f"(k) session-host {node} does not report ack_after_ms = {ack_after_ms} in its start-up log")
                settings[side] = f"ack_after_ms: {ack_after_ms}"
                proc, target = self.start_side_client(tunnel, host_port=host_port, roles={"session-host": host.pid})
                started.append(proc)
                targets[side] = target
                nats_names[side] = f"session-host-{node}"
            self.extra_pids = [p.pid for p in started]
            log("(k) " + ", ".join(f"{ACK_SIDES[s][1]} on a session-host started with {v}" for s, v in settings.items()))
            for key in ACK_WORKLOADS:
                _, path, conns, threads, headers = LOAD_WORKLOADS[key]
                for side in ("on", "off"):
                    self.load(targets[side], path, conns, threads, headers, 1)
            log("(k) warm-up done")

            def measure(key: str, side: str) -> tuple[dict, str]:
                before = self.nats_messages_sent()
                result = self.load_workload(targets[side], key)
                after = self.nats_messages_sent()
                done = result["requests"] or 1
                name = nats_names[side]
                result["nats_msgs_per_req.session-host"] = (after.get(name, 0) - before.get(name, 0)) / done
                return result, (
                    roles_cpu(result, ("ingress", "session-host"))
                    + f"  host sent {result['nats_msgs_per_req.session-host']:.2f} NATS msgs/req"
                )

            runs = self.alternate("k", "ack", ACK_WORKLOADS, measure)
        finally:
            for proc in reversed(started):
                self.procs.stop(proc)
            self.extra_pids = []
        self.results["k"] = {
            "title": "acknowledgement cost: every request acknowledged / quick requests not",
            "tunnels": {side: tunnel for side, (_, tunnel) in ACK_SIDES.items()},
            "ack_after_ms": {side: ms for side, (ms, _) in ACK_SIDES.items()},
            "host_settings": settings,
            "workloads": on_off_summary(ACK_WORKLOADS, runs),
        }
        bad = failed_runs("k", runs)
        # On the wire: the acknowledgement is one more message from the host per request, so "on"
        # must send about one more than "off", or the two sides do not differ as they claim.
        for key, w in self.results["k"]["workloads"].items():
            sent = {side: w["median"][side]["nats_msgs_per_req.session-host"] for side in ("on", "off")}
            if sent["on"] - sent["off"] < 0.5:
                bad[f"(k{key}) NATS messages per request"] = f"the host sent {sent['on']:.2f} on and {sent['off']:.2f} off"
        if bad:
            self.results["k"]["error"] = "; ".join(f"{k}: {v}" for k, v in bad.items())
            raise RuntimeError(self.results["k"]["error"])

    def load_workload(self, target: Target, key: str, duration: int | None = None) -> dict:
        """One run of load workload `key` on `target`, for `duration` seconds (--duration)."""
        _, path, conns, threads, headers = LOAD_WORKLOADS[key]
        return self.load(target, path, conns, threads, headers, duration or self.args.duration)

    def alternate(self, workload: str, what: str, keys, measure) -> dict:
        """The --rounds rounds of on/off `workload` (logged as `(<workload><key>) <what> <side>`):
        each load workload of `keys` on both sides, on first in odd rounds and off first in even
        ones, so neither side always runs first. `measure(key, side)` runs one and returns its
        result and the workload's detail for the log. Returns the runs, `{key: {side: [...]}}`."""
        runs = {key: {"on": [], "off": []} for key in keys}
        for r in range(self.args.rounds):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for key in keys:
                for side in order:
                    result, detail = measure(key, side)
                    runs[key][side].append(result)
                    log_on_off_run(f"round {r + 1}/{self.args.rounds} ({workload}{key}) {what} {side:3}", result, detail)
        return runs

    # ---- (m) encryption at rest

    def start_recorded_stack(self, side: str, encryption_key: str | None) -> tuple[list[subprocess.Popen], Target, int]:
        """The stack of side `side` of (m): a fresh nats-server (encrypted at rest with
        `encryption_key` when given), an auditor, a session-host, an ingress and a client of the
        upstream asking to be recorded, waited for until a request through it is served. Returns
        its processes (to stop), its Target and its session-host's port."""
        started: list[subprocess.Popen] = []
        nats, nats_port, _ = self.start_nats_server(f"nats-server-enc-{side}", encryption_key)
        started.append(nats)
        nats_url = f"nats://127.0.0.1:{nats_port}"
        auditor, _ = self.start_service(
            f"tunnel-auditor-enc-{side}", "tunnel-auditor", [], env={"TUNNEL_NODE_ID": f"enc-{side}"}, nats_url=nats_url
        )
        started.append(auditor)
        ingress_port = free_port()
        host, host_port = self.start_service(
            f"tunnel-session-host-enc-{side}",
            "tunnel-session-host",
            ["--public-url", f"http://{{name}}.localhost:{ingress_port}"],
            env={**HOST_ENV, "TUNNEL_NODE_ID": f"enc-{side}"},
            nats_url=nats_url,
        )
        started.append(host)
        ingress = self.start_ingress(f"tunnel-ingress-enc-{side}", ingress_port, {"TUNNEL_NODE_ID": f"enc-{side}"}, nats_url)
        started.append(ingress)
        name = ENCRYPTION_SIDES[side]
        log_name = f"tunnel-client-{name}"
        state_env = {"TUNNEL_STATE_DIR": str(self.workdir / "tunnel-state")}
        client = self.start_tunnel_client(name, log_name, ["--record"], state_env, host_port)
        started.append(client)
        ready = json.loads(
            wait_until(
                f"tunnel client {name}",
                lambda: first_line_matching(self.procs.log_of(log_name), r'"event":"ready"'),
                30,
                client,
            )
        )
        if not ready.get("recording"):
            raise RuntimeError(f"(m) tunnel {name} is not recorded: {ready}")
        host_header = f"{name}.localhost:{ingress_port}"
        wait_until(
            f"first request through {name}",
            lambda: http_status(f"http://127.0.0.1:{ingress_port}/small", host_header) == 200,
            30,
        )
        roles = {"ingress": ingress.pid, "nats-server": nats.pid, "session-host": host.pid, "client": client.pid}
        return started, Target("http-tunnel", f"http://127.0.0.1:{ingress_port}", host_header, roles), host_port

    def run_encryption(self) -> None:
        """(b) and (a) through two recorded tunnels on stacks of their own, one nats-server
        encrypting its store at rest and one not, in alternating runs."""
        started: list[subprocess.Popen] = []
        targets: dict[str, Target] = {}
        host_ports: dict[str, int] = {}
        try:
            for side in ("on", "off"):
                key = secrets.token_hex(32) if side == "on" else None
                procs, targets[side], host_ports[side] = self.start_recorded_stack(side, key)
                started += procs
                # The server says at start-up whether it encrypts: the sides must differ as claimed.
                said = first_line_matching(self.procs.log_of(f"nats-server-enc-{side}"), r"Encryption:")
                if side == "on" and "ChaCha20-Poly1305" not in (said or ""):
                    raise RuntimeError(f"(m) the encrypted nats-server does not report its cipher: {said!r}")
                if side == "off" and said:
                    raise RuntimeError(f"(m) the plain nats-server reports encryption: {said!r}")
            self.extra_pids = [p.pid for p in started]
            for key in ENCRYPTION_WORKLOADS:
                for side in ("on", "off"):
                    self.load_workload(targets[side], key, 1)
                    self.wait_recorder_idle(targets[side], host_port=host_ports[side])
            log("(m) warm-up done")

            def measure(key: str, side: str) -> tuple[dict, str]:
                nats_pid = targets[side].roles["nats-server"]
                before, nats_cpu0 = self.recorder_counters(host_ports[side]), cpu_seconds([nats_pid])
                result = self.load_workload(targets[side], key)
                # Records still queued after the run are the run's: the other side's run waits.
                drain_s, drain_cpu = self.wait_recorder_idle(targets[side], host_port=host_ports[side])
                after, nats_cpu = self.recorder_counters(host_ports[side]), cpu_seconds([nats_pid]) - nats_cpu0
                done = result["requests"] or 1
                stored = after["stored_bytes"] - before["stored_bytes"]
                result["drain_s"] = drain_s
                result["drain_cpu_us_per_req"] = drain_cpu * 1e6 / done
                result["recorded_bytes_per_req"] = stored / done
                result["recorded_mb_per_s"] = stored / 1e6 / (self.args.duration + drain_s)
                # What storing costs the server, run and drain together, per MB it stored: a side
                # whose recordings were cut (the host never waits for the log) stores less per
                # request, so this compares what req/s alone does not.
                result["nats_cpu_ms_per_recorded_mb"] = nats_cpu * 1e3 / (stored / 1e6) if stored else float("nan")
                result["recordings_dropped"] = after["dropped"] - before["dropped"]
                result["recording_bodies_cut"] = after["cut"] - before["cut"]
                return result, (
                    f" (nats-server {result.get('cpu_us_per_req.nats-server', 0):.1f},"
                    f" +{result['drain_cpu_us_per_req']:.0f} after, {drain_s:.1f} s)"
                    f"  recorded {result['recorded_bytes_per_req'] / 1e3:.1f} kB/req,"
                    f" {result['recorded_mb_per_s']:.1f} MB/s, nats-server {result['nats_cpu_ms_per_recorded_mb']:.2f} ms/MB,"
                    f" dropped {result['recordings_dropped']:.0f}, bodies cut {result['recording_bodies_cut']:.0f}"
                )

            runs = self.alternate("m", "encryption", ENCRYPTION_WORKLOADS, measure)
        finally:
            for proc in reversed(started):
                self.procs.stop(proc)
            self.extra_pids = []
        self.results["m"] = {
            "title": "encryption at rest on / off, recorded tunnels",
            "tunnels": dict(ENCRYPTION_SIDES),
            "cipher": "chachapoly",
            "workloads": on_off_summary(ENCRYPTION_WORKLOADS, runs),
        }
        bad = failed_runs("m", runs)
        if bad:
            self.results["m"]["error"] = "; ".join(f"{k}: {v}" for k, v in bad.items())
            raise RuntimeError(self.results["m"]["error"])

    # ---- (n) traces

    def run_traces(self) -> None:
        """(a) and (c) through a stack whose ingress, session-host and client export spans to an
        OTLP sink, and one without traces, in alternating runs."""
        started: list[subprocess.Popen] = []
        targets: dict[str, Target] = {}
        sink = OtlpSink()
        try:
            for side, name in TRACE_SIDES.items():
                ratio = str(self.args.trace_sample_ratio)
                traced = {"TUNNEL_OTLP_ENDPOINT": sink.url, "TUNNEL_TRACE_SAMPLE_RATIO": ratio} if side == "on" else {}
                ingress_port = free_port()
                host, host_port = self.start_service(
                    f"tunnel-session-host-{name}",
                    "tunnel-session-host",
                    ["--public-url", f"http://{{name}}.localhost:{ingress_port}"],
                    env={**HOST_ENV, "TUNNEL_NODE_ID": name, **traced},
                )
                started.append(host)
                ingress = self.start_ingress(f"tunnel-ingress-{name}", ingress_port, {"TUNNEL_NODE_ID": name, **traced})
                started.append(ingress)
                flags = ["--otlp-endpoint", sink.url] if side == "on" else []
                client = self.start_tunnel_client(name, f"tunnel-client-{name}", ["--no-inspect", *flags], None, host_port)
                started.append(client)
                host_header = f"{name}.localhost:{ingress_port}"
                wait_until(
                    f"first request through {name}",
                    lambda: http_status(f"http://127.0.0.1:{ingress_port}/small", host_header) == 200,
                    30,
                    client,
                )
                roles = {"ingress": ingress.pid, "session-host": host.pid, "client": client.pid, "nats-server": self.nats.pid}
                targets[side] = Target("http-tunnel", f"http://127.0.0.1:{ingress_port}", host_header, roles)
            self.extra_pids = [p.pid for p in started]
            for key in TRACE_WORKLOADS:
                for side in ("on", "off"):
                    self.load_workload(targets[side], key, 1)
            wait_until("spans at the OTLP sink", lambda: sink.posts > 0, 30)
            log(f"(n) warm-up done; the sink has {sink.posts} exports ({sink.bytes / 1e3:.0f} kB)")

            def measure(key: str, side: str) -> tuple[dict, str]:
                posts, size = sink.posts, sink.bytes
                result = self.load_workload(targets[side], key)
                result["otlp_kb_per_s"] = (sink.bytes - size) / 1e3 / self.args.duration
                return result, roles_cpu(result, ("ingress", "session-host", "client")) + f"  exports {sink.posts - posts}"

            runs = self.alternate("n", "traces", TRACE_WORKLOADS, measure)
        finally:
            for proc in reversed(started):
                self.procs.stop(proc)
            self.extra_pids = []
            sink.close()
        self.results["n"] = {
            "title": "traces on / off",
            "tunnels": dict(TRACE_SIDES),
            "otlp_exports": sink.posts,
            "workloads": on_off_summary(TRACE_WORKLOADS, runs),
        }
        bad = failed_runs("n", runs)
        if bad:
            self.results["n"]["error"] = "; ".join(f"{k}: {v}" for k, v in bad.items())
            raise RuntimeError(self.results["n"]["error"])

    # ---- (l) the client's inspector

    def run_inspector_cost(self) -> None:
        """(b), (a) and (c) through a client with its inspector on and one with it off, in
        alternating runs; before them, each fresh client's idle RSS and CPU, and its RSS after
        --inspect-fill small requests."""
        started: list[subprocess.Popen] = []
        targets: dict[str, Target] = {}
        pids: dict[str, int] = {}
        result: dict = {"title": "inspector cost: the client's inspector on / off", "tunnels": {}}
        try:
            for side, (tunnel, extra) in INSPECT_SIDES.items():
                proc, target = self.start_side_client(tunnel, extra=extra)
                started.append(proc)
                targets[side], pids[side] = target, proc.pid
                result["tunnels"][side] = f"{tunnel} ({' '.join(extra)})"
            self.extra_pids = [p.pid for p in started]
            ready = {
                side: json.loads(first_line_matching(self.procs.log_of(f"tunnel-client-{tunnel}"), r'"event":"ready"') or "{}")
                for side, (tunnel, _) in INSPECT_SIDES.items()
            }
            if "inspector" not in ready["on"] or "inspector" in ready["off"]:
                raise RuntimeError(f"(l) expected an inspector on the 'on' client only: {ready}")
            inspector = ready["on"]["inspector"]
            log(f"(l) {INSPECT_SIDES['on'][0]} inspector at {inspector}, {INSPECT_SIDES['off'][0]} without")

            window = self.args.inspect_idle_window
            rss0 = {side: rss_kib(pid) for side, pid in pids.items()}
            cpu0 = {side: cpu_seconds([pid]) for side, pid in pids.items()}
            time.sleep(window)  # measuring idleness: nothing to wait for but time
            cpu1 = {side: cpu_seconds([pid]) for side, pid in pids.items()}
            result["idle"] = {
                side: {
                    "rss_kib": rss0[side],
                    "rss_kib_after": rss_kib(pids[side]),
                    "cpu_s": cpu1[side] - cpu0[side],
                    "cpu_pct": (cpu1[side] - cpu0[side]) * 100 / window,
                }
                for side in pids
            }
            result["idle_window_s"] = window
            log("(l) idle: " + ", ".join(f"{s} {v['rss_kib']} KiB, {v['cpu_s']:.3f} s CPU in {window:.0f} s" for s, v in result["idle"].items()))

            fill = {}
            for side, target in targets.items():
                before = rss_kib(pids[side])
                errors = send_sequential(target, "/small", self.args.inspect_fill)
                fill[side] = {"rss_kib_before": before, "rss_kib_after": rss_kib(pids[side]), "errors": errors}
                log(f"(l) fill {side}: {self.args.inspect_fill} requests, RSS {before} -> {fill[side]['rss_kib_after']} KiB")
            with urllib.request.urlopen(f"{inspector}/api/requests?path=/small", timeout=30) as response:
                held = len(json.load(response)["requests"])
            fill["on"]["held"] = held
            result["fill"] = fill
            result["fill_requests"] = self.args.inspect_fill
            if held < self.args.inspect_fill or any(f["errors"] for f in fill.values()):
                raise RuntimeError(f"(l) the inspector holds {held} of {self.args.inspect_fill} exchanges, errors {fill}")

            for key in INSPECT_WORKLOADS:
                _, path, conns, threads, headers = LOAD_WORKLOADS[key]
                for side in ("on", "off"):
                    self.load(targets[side], path, conns, threads, headers, 1)
            runs = {key: {"on": [], "off": []} for key in INSPECT_WORKLOADS}
            for r in range(self.args.rounds):
                order = ("on", "off") if r % 2 == 0 else ("off", "on")
                for key in INSPECT_WORKLOADS:
                    _, path, conns, threads, headers = LOAD_WORKLOADS[key]
                    for side in order:
                        run = self.load(targets[side], path, conns, threads, headers, self.args.duration)
                        runs[key][side].append(run)
                        bad = run.get("errors", 0) + run.get("non_2xx", 0)
                        log(
                            f"round {r + 1}/{self.args.rounds} (l{key}) inspector {side:3} "
                            f"{run['rps']:>9.0f} req/s  p50 {run['p50_ms']:.3f} ms  p99 {run['p99_ms']:.3f} ms"
                            f"  client cpu {run.get('cpu_us_per_req.client', 0):.1f} us/req"
                            f"  other load {run['foreign_cpu_cores']:.2f} cores"
                            + (f"  ERRORS {bad}" if bad else "")
                        )
            result["workloads"] = on_off_summary(INSPECT_WORKLOADS, runs)
            result["rss_kib_after_runs"] = {side: rss_kib(pid) for side, pid in pids.items()}
        finally:
            for proc in reversed(started):
                self.procs.stop(proc)
            self.extra_pids = []
            self.results["l"] = result
        bad = {
            f"(l{key}) {side} round {n + 1}": f"{r.get('non_2xx', 0)} non-2xx, {r.get('errors', 0)} errors"
            for key, w in runs.items()
            for side, rs in w.items()
            for n, r in enumerate(rs)
            if r.get("non_2xx", 0) or r.get("errors", 0)
        }
        if bad:
            result["error"] = "; ".join(f"{k}: {v}" for k, v in bad.items())
            raise RuntimeError(result["error"])

    # ---- (h) recording and replay

    def run_recording(self) -> None:
        """(b) and (a) through a recorded and an unrecorded tunnel, then replay of the recording."""
        port = self.ingress_port
        unavailable = first_line_matching(self.procs.log_of("tunnel-session-host"), r"recording stream unavailable")
        if unavailable:
            raise RuntimeError(f"(h) the session-host cannot record: {unavailable}")
        # The clients' state (name, server, secret) goes here, not into the user's state dir.
        state_env = {"TUNNEL_STATE_DIR": str(self.workdir / "tunnel-state")}
        sides = {"on": (RECORDED_TUNNEL, ["--record"]), "off": (UNRECORDED_TUNNEL, [])}
        clients: dict[str, subprocess.Popen] = {}
        targets: dict[str, Target] = {}
        for side, (name, extra) in sides.items():
            log_name = f"tunnel-client-{name}"
            proc = self.start_tunnel_client(name, log_name, extra, state_env)
            clients[side] = proc
            ready = json.loads(
                wait_until(
                    f"tunnel client {name}",
                    lambda: first_line_matching(self.procs.log_of(log_name), r'"event":"ready"'),
                    30,
                    proc,
                )
            )
            if ready.get("recording") != (side == "on"):
                raise RuntimeError(f"(h) tunnel {name}: recording is {ready.get('recording')}, expected {side}")
            host = f"{name}.localhost:{port}"
            wait_until(
                f"first request through {name}",
                lambda: http_status(f"http://127.0.0.1:{port}/small", host) == 200,
                30,
            )
            roles = dict(self.targets["http-tunnel"].roles, client=proc.pid)
            targets[side] = Target("http-tunnel", f"http://127.0.0.1:{port}", host, roles)
        self.extra_pids = [p.pid for p in clients.values()]
        try:
            for key in RECORDING_WORKLOADS:
                _, path, conns, threads, headers = LOAD_WORKLOADS[key]
                for side in ("on", "off"):
                    self.load(targets[side], path, conns, threads, headers, 1)
                    self.wait_recorder_idle(targets[side])
            log("(h) warm-up done")
            runs = {key: {"on": [], "off": []} for key in RECORDING_WORKLOADS}
            replay_since_ms = 0
            for r in range(self.args.rounds):
                # on off, then off on: neither side always runs right after the other's drain.
                order = ("on", "off") if r % 2 == 0 else ("off", "on")
                for key in RECORDING_WORKLOADS:
                    _, path, conns, threads, headers = LOAD_WORKLOADS[key]
                    for side in order:
                        if side == "on" and key == "a":
                            # The replay reads from here: the last small run of the recorded tunnel.
                            replay_since_ms = int(time.time() * 1000) - 1
                        before = self.recorder_counters()
                        result = self.load(targets[side], path, conns, threads, headers, self.args.duration)
                        drain_s, drain_cpu = self.wait_recorder_idle(targets[side])
                        after = self.recorder_counters()
                        done = result["requests"] or 1
                        result["drain_s"] = drain_s
                        result["drain_cpu_us_per_req"] = drain_cpu * 1e6 / done
                        result["recorded_bytes"] = after["stored_bytes"] - before["stored_bytes"]
                        result["recorded_bytes_per_req"] = result["recorded_bytes"] / done
                        result["recordings_dropped"] = after["dropped"] - before["dropped"]
                        result["recording_bodies_cut"] = after["cut"] - before["cut"]
                        runs[key][side].append(result)
                        bad = result.get("errors", 0) + result.get("non_2xx", 0)
                        log(
                            f"round {r + 1}/{self.args.rounds} (h{key}) recording {side:3} "
                            f"{result['rps']:>9.0f} req/s  p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms"
                            f"  cpu {result.get('cpu_us_per_req', 0):.0f} us/req"
                            f" (+{result['drain_cpu_us_per_req']:.0f} after, {drain_s:.1f} s)"
                            f"  recorded {result['recorded_bytes'] / 1e6:.1f} MB, dropped {result['recordings_dropped']:.0f}"
                            f"  other load {result['foreign_cpu_cores']:.2f} cores"
                            + (f"  ERRORS {bad}" if bad else "")
                        )
            workloads = on_off_summary(RECORDING_WORKLOADS, runs)
            replay = self.run_replay(replay_since_ms, state_env)
        finally:
            for proc in clients.values():
                self.procs.stop(proc)
            self.extra_pids = []
        self.results["h"] = {
            "title": "recording on / off, and replay",
            "tunnels": {"on": RECORDED_TUNNEL, "off": UNRECORDED_TUNNEL},
            "workloads": workloads,
            "replay": replay,
        }

    def recorder_counters(self, host_port: int | None = None) -> dict:
        """The recording counters of the session-host at `host_port` (the bench's by default;
        absent until first counted: 0)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{host_port or self.host_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        out = {"stored_bytes": 0.0, "dropped": 0.0, "cut": 0.0}
        names = {
            "host_recordings_stored_bytes_total": "stored_bytes",
            "host_recordings_dropped_total": "dropped",
            "host_recording_bodies_cut_total": "cut",
        }
        for line in text.splitlines():
            name = re.split(r"[{\s]", line, maxsplit=1)[0]
            if name in names:
                out[names[name]] += float(line.split()[-1])
        return out

    def wait_recorder_idle(
        self, target: Target, quiet: float = 1.0, timeout: float = 60, host_port: int | None = None
    ) -> tuple[float, float]:
        """Waits until the session-host (at `host_port`, the bench's by default) stored no
        recording for `quiet` seconds, so that records still queued after a run are not published
        during the next one. Returns the seconds until the last store and the CPU seconds the
        tunnel's processes used meanwhile."""
        t0 = time.monotonic()
        cpu0 = cpu_seconds(target.pids)
        last = self.recorder_counters(host_port)
        changed = t0
        while time.monotonic() - changed < quiet and time.monotonic() - t0 < timeout:
            time.sleep(0.05)
            now = self.recorder_counters(host_port)
            if now != last:
                last, changed = now, time.monotonic()
        return changed - t0, cpu_seconds(target.pids) - cpu0

    def run_replay(self, since_ms: int, env: dict) -> dict:
        """`tunnel replay` of the recorded tunnel's small exchanges straight to the upstream."""
        path = LOAD_WORKLOADS["a"][1]
        concurrencies = self.args.replay_concurrency
        attempts: dict[int, list[dict]] = {c: [] for c in concurrencies}
        for r in range(self.args.replay_rounds):
            for c in concurrencies:
                argv = [
                    str(self.bin / "tunnel"),
                    "replay",
                    RECORDED_TUNNEL,
                    "--nats",
                    self.nats_url,
                    "--path",
                    path,
                    "--since",
                    str(since_ms),
                    "--limit",
                    str(self.args.replay_limit),
                    "--to",
                    f"http://127.0.0.1:{self.upstream_port}",
                    "--concurrency",
                    str(c),
                    "--json",
                ]
                kids0, up0 = children_cpu_seconds(), cpu_seconds([self.upstream_pid])
                t0 = time.monotonic()
                out = subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
                elapsed = time.monotonic() - t0
                kids, up = children_cpu_seconds() - kids0, cpu_seconds([self.upstream_pid]) - up0
                lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
                summary = next((l for l in reversed(lines) if l.get("event") == "summary"), None)
                if summary is None:
                    raise RuntimeError(
                        f"(h) tunnel replay printed no summary (exit {out.returncode}): "
                        f"{(out.stderr or out.stdout).strip()[-500:]}"
                    )
                statuses: dict[str, int] = {}
                for l in lines:
                    if "outcome" in l:
                        k = str(l.get("status", l["outcome"]))
                        statuses[k] = statuses.get(k, 0) + 1
                attempt = {
                    **{k: v for k, v in summary.items() if k != "event"},
                    "concurrency": c,
                    "outcomes": statuses,
                    # The whole command: reading the log from NATS, then sending.
                    "command_s": elapsed,
                    "command_cpu_s": kids,
                    "upstream_cpu_s": up,
                    "exit_code": out.returncode,
                }
                attempts[c].append(attempt)
                log(
                    f"(h) replay round {r + 1} concurrency {c:>3}: {summary['replayed']} replayed, "
                    f"{summary.get('answered', 0)} answered, {summary.get('failed', 0)} failed in "
                    f"{summary['seconds']:.2f} s: {summary['per_second']:,.0f}/s "
                    f"(command {elapsed:.1f} s, {kids:.1f} CPU-s)"
                )
        by_concurrency = {
            c: {
                "per_second": statistics.median(a["per_second"] for a in runs),
                "replayed": min(a["replayed"] for a in runs),
                "failed": max(a["failed"] for a in runs),
                "runs": runs,
            }
            for c, runs in attempts.items()
        }
        best = max(by_concurrency, key=lambda c: by_concurrency[c]["per_second"])
        return {
            "tunnel": RECORDED_TUNNEL,
            "path": path,
            "since_ms": since_ms,
            "limit": self.args.replay_limit,
            "to": "bench-upstream",
            "concurrency_used": concurrencies[0],
            "best_concurrency": best,
            "by_concurrency": {str(c): v for c, v in by_concurrency.items()},
        }

    # ---- driver

    def machine(self) -> dict:
        model = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        mem_kib = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])

        def version(argv):
            try:
                res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                text = (res.stdout + res.stderr).strip().splitlines()
                return text[0] if text else ""
            except OSError:
                return ""

        return {
            "nproc": os.cpu_count(),
            "cpu_model": model,
            "kernel": platform.release(),
            "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "nats_server": version([self.args.nats_server, "--version"]),
            "loadgen": version([self.args.wrk, "-v"]) if self.args.loadgen == "wrk" else version([self.args.oha, "--version"]),
            "rathole": "rathole " + next(
                (l.split(":", 1)[1].strip() for l in subprocess.run([self.args.rathole, "--version"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Build Version")),
                "?",
            ),
            "bore": version([self.args.bore, "--version"]),
        }


# --------------------------------------------------------------------------------------------
# parsing and reporting


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unparsable duration {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def to_bytes(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)([KMGT]?B)", text)
    if not m:
        return 0.0
    return float(m.group(1)) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[m.group(2)]


def parse_wrk(out: str) -> dict:
    res: dict = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+\w+) read", out)
    if not m:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    res["requests"] = int(m.group(1))
    res["seconds"] = to_ms(m.group(2) + m.group(3)) / 1000
    res["bytes"] = to_bytes(m.group(4))
    res["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    res["mb_per_s"] = res["bytes"] / res["seconds"] / 1e6
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[key] = to_ms(m.group(1)) if m else float("nan")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    return res


def parse_oha(out: str) -> dict:
    data = json.loads(out)
    summary = data["summary"]
    codes = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    total = sum(codes.values())
    pct = data.get("latencyPercentiles", {})
    seconds = summary["total"]
    size = summary.get("totalData", 0)
    return {
        "requests": total,
        "seconds": seconds,
        "bytes": size,
        "rps": summary["requestsPerSec"],
        "mb_per_s": size / seconds / 1e6 if seconds else 0.0,
        "p50_ms": (pct.get("p50") or 0) * 1000,
        "p99_ms": (pct.get("p99") or 0) * 1000,
        # Requests cut off by the end of the run (-z) are not errors.
        "errors": sum(v for k, v in data.get("errorDistribution", {}).items() if "deadline" not in k),
        "non_2xx": total - ok,
    }


def foreign_summary(results: dict) -> dict:
    groups = [results.get(key, {}).get("runs", {}) for key in LOAD_WORKLOADS]
    groups += [w["runs"] for w in results.get("h", {}).get("workloads", {}).values()]  # (h) may have failed
    groups += [w["runs"] for w in results.get("i", {}).get("workloads", {}).values()]
    groups += [w["runs"] for w in results.get("i", {}).get("quota", {}).get("workloads", {}).values()]
    groups += [w["runs"] for w in results.get("k", {}).get("workloads", {}).values()]
    groups += [w["runs"] for w in results.get("m", {}).get("workloads", {}).values()]
    values = [r["foreign_cpu_cores"] for runs in groups for rs in runs.values() for r in rs if "foreign_cpu_cores" in r]
    if not values:
        return {}
    return {"median": statistics.median(values), "max": max(values)}


def log_on_off_run(label: str, result: dict, detail: str) -> None:
    """Logs one run of an on/off workload: `label`, req/s, latency, CPU per request, `detail`,
    the other load on the machine and the errors, if any."""
    bad = result.get("errors", 0) + result.get("non_2xx", 0)
    log(
        f"{label} {result['rps']:>9.0f} req/s  p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms"
        f"  cpu {result.get('cpu_us_per_req', 0):.0f} us/req{detail}"
        f"  other load {result['foreign_cpu_cores']:.2f} cores"
        + (f"  ERRORS {bad}" if bad else "")
    )


def roles_cpu(result: dict, roles: tuple[str, ...]) -> str:
    """` (ingress 12.3, session-host 4.5)`: the CPU per request, in us, of each of `roles`."""
    return " (" + ", ".join(f"{role} {result.get(f'cpu_us_per_req.{role}', 0):.1f}" for role in roles) + ")"


def failed_runs(workload: str, runs: dict) -> dict[str, str]:
    """The runs of on/off `workload` (`{key: {side: [result...]}}`) that saw errors or non-2xx
    answers, by name (`(mb) on round 2`)."""
    return {
        f"({workload}{key}) {side} round {n + 1}": f"{r.get('non_2xx', 0)} non-2xx, {r.get('errors', 0)} errors"
        for key, w in runs.items()
        for side, rs in w.items()
        for n, r in enumerate(rs)
        if r.get("non_2xx", 0) or r.get("errors", 0)
    }


def on_off_summary(keys, runs: dict) -> dict:
    """Per load workload in `keys`, from its runs `{"on": [...], "off": [...]}`: the runs, their
    medians, the ratio of median req/s on over off (the figure), and the same ratio within each
    round (on and off measured a few seconds apart)."""
    out = {}
    for key in keys:
        on, off = runs[key]["on"], runs[key]["off"]
        med = {side: median_of(rs) for side, rs in runs[key].items()}
        out[key] = {
            "title": LOAD_WORKLOADS[key][0],
            "path": LOAD_WORKLOADS[key][1],
            "runs": runs[key],
            "median": med,
            "rps_ratio": med["on"]["rps"] / med["off"]["rps"] if med["off"]["rps"] else 0.0,
            "rps_ratio_by_round": [a["rps"] / b["rps"] if b["rps"] else 0.0 for a, b in zip(on, off)],
        }
    return out


def median_of(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) for r in runs)]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def fmt(v: float, digits: int = 0) -> str:
    if v != v:  # NaN
        return "-"
    return f"{v:,.{digits}f}"


def ratio(v: float, base: float) -> str:
    return f" ({v / base:.2f}x)" if base else ""


def table(report: dict) -> str:
    res = report["results"]
    names = [n for n in CONFIGS if any(n in res.get(k, {}).get("median", {}) for k in LOAD_WORKLOADS)] or CONFIGS
    lines = ["| workload | metric | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]

    def row(workload: str, metric: str, cells: list[str]) -> None:
        lines.append(f"| {workload} | {metric} | " + " | ".join(cells) + " |")

    for key in ("a", "b", "c", "g"):
        if key not in res:
            continue
        med = res[key]["median"]
        d = med.get("direct", {})
        title = f"({key}) {res[key]['title']}"
        row(title, "req/s (ratio to direct)", [fmt(med[n]["rps"]) + ratio(med[n]["rps"], d.get("rps", 0)) if n != "direct" else fmt(med[n]["rps"]) for n in names])
        if key == "b":
            row("", "MB/s", [fmt(med[n]["mb_per_s"]) for n in names])
        if key in ("a", "c", "b"):
            row("", "p50 / p99 latency, ms", [f"{med[n]['p50_ms']:.3f} / {med[n]['p99_ms']:.3f}" for n in names])
        if key == "c":
            row("", "p50 / p99 added over direct, ms", ["-" if n == "direct" else f"+{med[n]['p50_ms'] - d.get('p50_ms', 0):.3f} / +{med[n]['p99_ms'] - d.get('p99_ms', 0):.3f}" for n in names])
        row("", "tunnel CPU per request, us", [fmt(med[n]["cpu_us_per_req"]) if "cpu_us_per_req" in med[n] else "-" for n in names])
        errs = [med[n].get("errors", 0) + med[n].get("non_2xx", 0) for n in names]
        if any(errs):
            row("", "errors + non-2xx (median)", [fmt(e) for e in errs])
    if "d" in res:
        for kind in ("download", "upload"):
            cells = []
            for n in names:
                v = res["d"][kind].get(n)
                if isinstance(v, dict):
                    cpu = f", {v['cpu_s_per_gib']:.2f} CPU-s/GiB" if "cpu_s_per_gib" in v else ""
                    cells.append(f"{fmt(v['mb_per_s'])} MB/s{cpu}")
                else:
                    cells.append(v or "-")
            row("(d) 1 GiB through one request" if kind == "download" else "", kind, cells)
    if "f" in res:
        med = res["f"]["median_ms"]
        row("(f) client start to first request served", "ms (median)", [fmt(med[n], 0) if n in med else "-" for n in names])
    out = "\n".join(lines) if len(lines) > 2 else ""  # only the header: none of these workloads ran
    roles = ["ingress", "nats-server", "session-host", "client", "auditor"]
    per = [
        (key, res[key]["median"].get("http-tunnel", {}))
        for key in ("a", "b", "c", "g")
        if key in res and "http-tunnel" in res[key]["median"]
    ]
    if per:
        p = [
            "",
            "http-tunnel CPU per request by process, us (the auditor is not in the sum above):",
            "",
            "| workload | " + " | ".join(roles) + " |",
            "|---|" + "---|" * len(roles),
        ]
        for key, med in per:
            p.append(f"| ({key}) | " + " | ".join(fmt(med.get(f"cpu_us_per_req.{r}", float("nan"))) for r in roles) + " |")
        out += "\n" + "\n".join(p)
    if "e" in res:
        e = ["", "| (e) idle sessions | session-host RSS, MiB | nats-server RSS, MiB | time to open, s | failed |", "|---|---|---|---|---|"]
        for step in res["e"]["steps"]:
            e.append(
                f"| {step['sessions']:,} | {step['host_rss_kib'] / 1024:.1f} | {step['nats_rss_kib'] / 1024:.1f} | "
                + (f"{step['open_ms'] / 1000:.1f}" if "open_ms" in step else "-")
                + f" | {step.get('failed', '-')} |"
            )
        last = res["e"]["steps"][-1]
        if "idle_host_cpu_pct" in last:
            e.append(
                f"\nWith {last['sessions']:,} idle sessions: session-host {last['idle_host_cpu_pct']:.1f}% CPU, "
                f"nats-server {last['idle_nats_cpu_pct']:.1f}% CPU (of one core, over {report['settings'].get('idle_cpu_window_s', 10)} s)."
            )
        out += "\n" + "\n".join(e)
    if "h" in res:
        out += "\n" + recording_table(res["h"])
    if "i" in res:
        out += "\n" + admission_table(res["i"])
    if "j" in res:
        out += "\n" + auditor_table(res["j"])
    if "k" in res:
        out += "\n" + ack_table(res["k"])
    if "m" in res:
        out += "\n" + encryption_table(res["m"])
    if "l" in res:
        out += "\n" + inspector_table(res["l"])
    if "n" in res:
        out += "\n" + traces_table(res["n"])
    return out.lstrip("\n")


# Targets of (h): req/s recording on / off, and replayed requests per second.
RECORDING_TARGETS = {"a": 0.8, "b": 0.6}
REPLAY_TARGET_PER_S = 5000


def recording_table(h: dict) -> str:
    if "error" in h:
        return f"\n(h) recording: failed: {h['error']}"
    on, off = h["tunnels"]["on"], h["tunnels"]["off"]
    lines = [
        "",
        f"| (h) recording | metric | off ({off}) | on ({on}, --record) | on / off |",
        "|---|---|---|---|---|",
    ]
    for key, w in h["workloads"].items():
        m_on, m_off = w["median"]["on"], w["median"]["off"]
        by_round = w["rps_ratio_by_round"]
        spread = f", rounds {min(by_round):.2f}-{max(by_round):.2f}" if len(by_round) > 1 else ""
        lines.append(
            f"| ({key}) {w['title']} | req/s | {fmt(m_off['rps'])} | {fmt(m_on['rps'])} | "
            f"**{w['rps_ratio']:.2f}x**{spread} |"
        )
        lines.append(
            f"|  | p50 / p99 latency, ms | {m_off['p50_ms']:.3f} / {m_off['p99_ms']:.3f} | "
            f"{m_on['p50_ms']:.3f} / {m_on['p99_ms']:.3f} | |"
        )
        cpu_on, cpu_off = m_on.get("cpu_us_per_req", float("nan")), m_off.get("cpu_us_per_req", float("nan"))
        lines.append(
            f"|  | tunnel CPU per request, us | {fmt(cpu_off)} | {fmt(cpu_on)} | "
            + (f"{cpu_on / cpu_off:.2f}x" if cpu_off == cpu_off and cpu_off else "-")
            + " |"
        )
        lines.append(
            f"|  | CPU after the run (recorder draining), us per request; seconds | "
            f"{fmt(m_off['drain_cpu_us_per_req'])}; {m_off['drain_s']:.1f} | "
            f"{fmt(m_on['drain_cpu_us_per_req'])}; {m_on['drain_s']:.1f} | |"
        )
        lines.append(
            f"|  | recorded bytes per request; dropped records (median per run) | - | "
            f"{fmt(m_on['recorded_bytes_per_req'])}; {fmt(m_on['recordings_dropped'])} | |"
        )
    roles = ["ingress", "nats-server", "session-host", "client", "auditor"]
    lines += ["", "(h) CPU per request by process, us:", "", "| run | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
    for key, w in h["workloads"].items():
        for side in ("off", "on"):
            med = w["median"][side]
            lines.append(f"| ({key}) recording {side} | " + " | ".join(fmt(med.get(f"cpu_us_per_req.{r}", float("nan"))) for r in roles) + " |")
    rp = h.get("replay")
    if rp:
        lines += [
            "",
            f"| (h) tunnel replay {rp['tunnel']} --path {rp['path']} --limit {rp['limit']} --to bench-upstream "
            "| replayed | failed | replayed per second (median) | replay command CPU-s (median) |",
            "|---|---|---|---|---|",
        ]
        for c, v in rp["by_concurrency"].items():
            mark = []
            if int(c) == rp["concurrency_used"]:
                mark.append("reference")
            if int(c) == rp["best_concurrency"]:
                mark.append("best")
            cpu = statistics.median(a["command_cpu_s"] for a in v["runs"])
            lines.append(
                f"| --concurrency {c}" + (f" ({', '.join(mark)})" if mark else "")
                + f" | {v['replayed']:,} | {v['failed']:,} | {fmt(v['per_second'])} | {cpu:.2f} |"
            )
    lines += ["", "| (h) target | this run | met |", "|---|---|---|"]
    for key, w in h["workloads"].items():
        want = RECORDING_TARGETS.get(key)
        if want is not None:
            lines.append(f"| ({key}) req/s recording on / off >= {want}x | {w['rps_ratio']:.3f}x | {'yes' if w['rps_ratio'] >= want else 'no'} |")
    if rp:
        used = rp["by_concurrency"][str(rp["concurrency_used"])]["per_second"]
        best = rp["by_concurrency"][str(rp["best_concurrency"])]["per_second"]
        lines.append(
            f"| replay >= {REPLAY_TARGET_PER_S:,}/s | {fmt(used)}/s at {rp['concurrency_used']}, best {fmt(best)}/s at "
            f"{rp['best_concurrency']} | {'yes' if used >= REPLAY_TARGET_PER_S else 'no'} |"
        )
    return "\n".join(lines)


def admission_table(i: dict) -> str:
    lines = [f"\n(i) admission: FAILED: {i['error']}"] if "error" in i else []
    if "workloads" not in i:
        return "\n".join(lines)
    on, off = i["tunnels"]["on"], i["tunnels"]["off"]
    lines += [
        "",
        f"| (i) admission | metric | off ({off}: no limits, no policy, no quota) | on ({on}: limits + policy + quota lookups) | on / off |",
        "|---|---|---|---|---|",
    ]
    for key, w in i["workloads"].items():
        m_on, m_off = w["median"]["on"], w["median"]["off"]
        by_round = w["rps_ratio_by_round"]
        spread = f", rounds {min(by_round):.2f}-{max(by_round):.2f}" if len(by_round) > 1 else ""
        lines.append(
            f"| ({key}) {w['title']} | req/s | {fmt(m_off['rps'])} | {fmt(m_on['rps'])} | "
            f"**{w['rps_ratio']:.3f}x**{spread} |"
        )
        lines.append(
            f"|  | p50 / p99 latency, ms | {m_off['p50_ms']:.3f} / {m_off['p99_ms']:.3f} | "
            f"{m_on['p50_ms']:.3f} / {m_on['p99_ms']:.3f} | "
            f"{m_on['p50_ms'] - m_off['p50_ms']:+.3f} / {m_on['p99_ms'] - m_off['p99_ms']:+.3f} |"
        )
        for metric, field in (("tunnel CPU per request, us", "cpu_us_per_req"), ("ingress CPU per request, us", "cpu_us_per_req.ingress")):
            c_on, c_off = m_on.get(field, float("nan")), m_off.get(field, float("nan"))
            lines.append(f"|  | {metric} | {fmt(c_off, 1)} | {fmt(c_on, 1)} | " + (f"{c_on - c_off:+.1f}" if c_on == c_on and c_off == c_off else "-") + " |")
    roles = ["ingress", "nats-server", "session-host", "client", "auditor"]
    lines += ["", "(i) CPU per request by process, us:", "", "| run | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
    for key, w in i["workloads"].items():
        for side in ("off", "on"):
            med = w["median"][side]
            lines.append(f"| ({key}) checks {side} | " + " | ".join(fmt(med.get(f"cpu_us_per_req.{r}", float("nan")), 1) for r in roles) + " |")
    if "checks" in i:
        lines.append("\n(i) " + on + " before measuring: " + ", ".join(f"{what}: {code}" for what, code in i["checks"].items()))
    q = i.get("quota")
    if q:
        t = q["tunnel"]
        lines += [
            "",
            f"| (i) quotas, {t} through the bench's ingress | metric | off (no limit, no state anywhere) | "
            f"on (limits set, a state in every ingress) | on / off |",
            "|---|---|---|---|---|",
        ]
        lines += on_off_rows(
            q["workloads"],
            (
                ("tunnel CPU per request, us", "cpu_us_per_req", 1),
                ("ingress CPU per request, us", "cpu_us_per_req.ingress", 1),
                ("auditor CPU per request, us", "cpu_us_per_req.auditor", 1),
            ),
        )
        lines += ["", "| (i) target | this run | met |", "|---|---|---|"]
        for key, w in q["workloads"].items():
            lines.append(f"| ({key}) req/s quotas on / off >= {QUOTA_TARGET}x | {w['rps_ratio']:.3f}x | {'yes' if w['rps_ratio'] >= QUOTA_TARGET else 'no'} |")
    return "\n".join(lines)


# Targets of issue 11: req/s with quotas on / off, and audit records counted per second.
QUOTA_TARGET = 0.97
AUDITOR_TARGET_PER_S = 50_000


def auditor_table(j: dict) -> str:
    if "error" in j:
        return f"\n(j) auditor throughput: FAILED: {j['error']}"
    lines = [
        "",
        f"| (j) auditor, {j['records_per_round']:,} records per round in batches of {j['records_per_batch']} | "
        "records/s first to last counted | from the first publish | publish (stored), s | peak lag, records | "
        "peak consumer num_pending, messages | peak auditor_consumer_pending | auditor CPU-us per record |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, x in enumerate(j["rounds"]):
        lines.append(
            f"| round {n + 1} | {fmt(x['records_per_s'])} | {fmt(x['end_to_end_records_per_s'])} | {x['publish_s']:.2f} | "
            f"{fmt(x['peak_lag_records'])} | {fmt(x['peak_consumer_pending_messages'])} | {fmt(x['peak_consumer_pending_metric'])} | "
            f"{x['auditor_cpu_us_per_record']:.2f} |"
        )
    lines.append(
        f"| **median** | **{fmt(j['records_per_s'])}** | {fmt(j['end_to_end_records_per_s'])} | | "
        f"max {fmt(j['peak_lag_records'])} | max {fmt(j['peak_consumer_pending_messages'])} | max {fmt(j['peak_consumer_pending_metric'])} | "
        f"{j['auditor_cpu_us_per_record']:.2f} |"
    )
    met = j["records_per_s"] >= AUDITOR_TARGET_PER_S
    lines += ["", "| (j) target | this run | met |", "|---|---|---|",
              f"| >= {AUDITOR_TARGET_PER_S:,} records/s | {fmt(j['records_per_s'])}/s (slowest round {fmt(j['records_per_s_min'])}/s) | {'yes' if met else 'no'} |"]
    return "\n".join(lines)


def on_off_rows(workloads: dict, extra: tuple) -> list[str]:
    """The rows of an on/off table per workload: req/s with the on/off ratio and its spread over
    the rounds, p50 / p99 latency, then each `(label, median field, digits)` of `extra`."""
    lines = []
    for key, w in workloads.items():
        m_on, m_off = w["median"]["on"], w["median"]["off"]
        by_round = w["rps_ratio_by_round"]
        spread = f", rounds {min(by_round):.2f}-{max(by_round):.2f}" if len(by_round) > 1 else ""
        lines.append(f"| ({key}) {w['title']} | req/s | {fmt(m_off['rps'])} | {fmt(m_on['rps'])} | **{w['rps_ratio']:.3f}x**{spread} |")
        lines.append(
            f"|  | p50 / p99 latency, ms | {m_off['p50_ms']:.3f} / {m_off['p99_ms']:.3f} | "
            f"{m_on['p50_ms']:.3f} / {m_on['p99_ms']:.3f} | "
            f"{m_on['p50_ms'] - m_off['p50_ms']:+.3f} / {m_on['p99_ms'] - m_off['p99_ms']:+.3f} |"
        )
        for metric, field, digits in extra:
            c_on, c_off = m_on.get(field, float("nan")), m_off.get(field, float("nan"))
            diff = f"{c_on - c_off:+.{digits}f}" if c_on == c_on and c_off == c_off else "-"
            lines.append(f"|  | {metric} | {fmt(c_off, digits)} | {fmt(c_on, digits)} | {diff} |")
    return lines


def on_off_table(result: dict, heading: str, sides: tuple[str, str], extra: tuple) -> list[str]:
    """The lines of an on/off table of `result` (a FAILED line first when it has an error; no
    table without workloads): `heading`, the off and on column titles of `sides`, then
    `on_off_rows` with `extra`."""
    lines = [f"\n{heading}: FAILED: {result['error']}"] if "error" in result else []
    if "workloads" not in result:
        return lines
    off, on = sides
    lines += ["", f"| {heading} | metric | off ({off}) | on ({on}) | on / off |", "|---|---|---|---|---|"]
    return lines + on_off_rows(result["workloads"], extra)


def ack_table(k: dict) -> str:
    ms = k.get("ack_after_ms", {})
    sides = (
        f"{k.get('tunnels', {}).get('off')}: ack_after_ms {ms.get('off')}, quick requests unacknowledged",
        f"{k.get('tunnels', {}).get('on')}: ack_after_ms {ms.get('on')}, every request acknowledged",
    )
    extra = (
        ("tunnel CPU per request, us", "cpu_us_per_req", 1),
        ("ingress CPU per request, us", "cpu_us_per_req.ingress", 1),
        ("session-host CPU per request, us", "cpu_us_per_req.session-host", 1),
        ("NATS messages the session-host sent per request", "nats_msgs_per_req.session-host", 2),
    )
    lines = on_off_table(k, "(k) acknowledgement cost", sides, extra)
    if "workloads" not in k:
        return "\n".join(lines)
    roles = ["ingress", "nats-server", "session-host", "client", "auditor"]
    lines += ["", "(k) CPU per request by process, us:", "", "| run | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
    for key, w in k["workloads"].items():
        for side in ("off", "on"):
            med = w["median"][side]
            lines.append(f"| ({key}) ack {side} | " + " | ".join(fmt(med.get(f"cpu_us_per_req.{r}", float("nan")), 1) for r in roles) + " |")
    return "\n".join(lines)


def encryption_table(m: dict) -> str:
    tunnels = m.get("tunnels", {})
    sides = (
        f"{tunnels.get('off')}, recorded, plain store",
        f"{tunnels.get('on')}, recorded, store encrypted with {m.get('cipher')}",
    )
    extra = (
        ("tunnel CPU per request, us", "cpu_us_per_req", 1),
        ("nats-server CPU per request, us", "cpu_us_per_req.nats-server", 1),
        ("recorded bytes per request", "recorded_bytes_per_req", 0),
        ("recorded MB/s (run and drain)", "recorded_mb_per_s", 1),
        ("nats-server CPU per recorded MB, ms (run and drain)", "nats_cpu_ms_per_recorded_mb", 2),
        ("recordings dropped per run", "recordings_dropped", 0),
        ("recorded bodies cut per run", "recording_bodies_cut", 0),
    )
    return "\n".join(on_off_table(m, "(m) encryption at rest", sides, extra))


def traces_table(n: dict) -> str:
    tunnels = n.get("tunnels", {})
    sides = (f"{tunnels.get('off')}, traces off", f"{tunnels.get('on')}, a span per stage exported over OTLP")
    extra = (
        ("tunnel CPU per request, us", "cpu_us_per_req", 1),
        ("ingress CPU per request, us", "cpu_us_per_req.ingress", 1),
        ("session-host CPU per request, us", "cpu_us_per_req.session-host", 1),
        ("client CPU per request, us", "cpu_us_per_req.client", 1),
        ("OTLP kB/s sent", "otlp_kb_per_s", 1),
    )
    return "\n".join(on_off_table(n, "(n) traces", sides, extra))


def inspector_table(l: dict) -> str:
    lines = [f"\n(l) inspector cost: FAILED: {l['error']}"] if "error" in l else []
    if "idle" in l:
        lines += ["", "| (l) client | off | on (inspector) |", "|---|---|---|"]
        idle, fill = l["idle"], l.get("fill", {})
        lines.append(f"| RSS fresh, KiB | {idle['off']['rss_kib']:,} | {idle['on']['rss_kib']:,} |")
        lines.append(
            f"| CPU idle over {l['idle_window_s']:.0f} s, s (% of a core) | {idle['off']['cpu_s']:.3f} ({idle['off']['cpu_pct']:.3f} %) | "
            f"{idle['on']['cpu_s']:.3f} ({idle['on']['cpu_pct']:.3f} %) |"
        )
        if fill:
            n = l["fill_requests"]
            lines.append(f"| RSS before / after {n:,} small requests, KiB | {fill['off']['rss_kib_before']:,} / {fill['off']['rss_kib_after']:,} | "
                         f"{fill['on']['rss_kib_before']:,} / {fill['on']['rss_kib_after']:,} ({fill['on'].get('held', 0):,} in the ring) |")
    if "workloads" in l:
        lines += ["", "| (l) inspector | metric | off (--no-inspect) | on (inspector, ring 10,000) | on / off |", "|---|---|---|---|---|"]
        lines += on_off_rows(l["workloads"], (("client CPU per request, us", "cpu_us_per_req.client", 1),))
        if "rss_kib_after_runs" in l:
            r = l["rss_kib_after_runs"]
            lines.append(f"\nClient RSS after the runs: off {r['off']:,} KiB, on {r['on']:,} KiB.")
    return "\n".join(lines)


def hold(bench: Bench) -> None:
    """Keeps the configurations up for manual runs and profiling until SIGINT or SIGTERM."""
    info = {
        name: {"url": t.base, "host": t.host, "pids": t.roles} for name, t in bench.targets.items()
    }
    info["logs"] = str(bench.workdir)
    print(json.dumps(info, indent=2), flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of every load workload (A B A B)")
    p.add_argument("--duration", type=int, default=5, help="seconds per load run")
    p.add_argument("--workloads", default="abcdefghijklmn", help="which workloads to run, e.g. 'ac' (commas are ignored: 'i,j')")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    p.add_argument("--idle-counts", default="1,1000,10000", help="idle session counts for (e)")
    p.add_argument("--idle-settle", type=float, default=3, help="seconds to wait before reading RSS in (e)")
    p.add_argument("--idle-cpu-window", type=float, default=10, help="seconds of idle CPU measured at the largest count")
    p.add_argument("--big-rounds", type=int, default=3, help="rounds of the 1 GiB transfers in (d)")
    p.add_argument("--big-timeout", type=int, default=120, help="seconds one 1 GiB transfer may take in (d)")
    p.add_argument("--replay-limit", type=int, default=20000, help="recorded small exchanges replayed in (h)")
    p.add_argument(
        "--replay-concurrency",
        default="64,32,128",
        help="concurrencies of the replay in (h); the first is the reference figure, the best is reported too",
    )
    p.add_argument("--replay-rounds", type=int, default=2, help="replays at each concurrency in (h), medians")
    p.add_argument("--audit-records", type=int, default=200_000, help="audit records published per round of (j)")
    p.add_argument("--audit-batch", type=int, default=256, help="records per AuditBatch message in (j)")
    p.add_argument("--inspect-idle-window", type=float, default=60, help="idle seconds over which (l) reads the clients' CPU")
    p.add_argument("--inspect-fill", type=int, default=10_000, help="small requests sent through each client of (l) before reading RSS")
    p.add_argument("--trace-sample-ratio", type=float, default=1.0, help="trace_sample_ratio of the traced ingress and session-host of (n)")
    p.add_argument("--upstream-threads", type=int, default=2)
    p.add_argument("--loadgen", choices=["wrk", "oha"], default="wrk")
    p.add_argument("--wrk", default="wrk")
    p.add_argument("--oha", default="oha")
    p.add_argument("--bore", default="bore")
    p.add_argument("--rathole", default="rathole")
    p.add_argument("--nats-server", default="nats-server")
    p.add_argument("--tunnel-bin-dir", required=True, help="directory of the http-tunnel release binaries")
    p.add_argument("--bench-bin-dir", required=True, help="directory of bench-upstream and idle-sessions")
    p.add_argument("--results-dir", required=True)
    p.add_argument("--git", default="", help="commit being measured, for the record")
    p.add_argument("--command", default="", help="the command line, for the record")
    p.add_argument("--quiet-load", type=float, default=1.0, help="wait for the 1-min load average to fall below this before measuring")
    p.add_argument("--quiet-wait", type=float, default=300, help="seconds to wait for a quiet machine at most")
    p.add_argument("--hold", action="store_true", help="start every configuration, print the targets, wait for Ctrl-C (for profiling)")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with every process's log")
    args = p.parse_args()
    args.idle_counts = sorted(int(x) for x in args.idle_counts.split(","))
    args.replay_concurrency = [int(x) for x in args.replay_concurrency.split(",")]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if "direct" not in configs:
        configs.insert(0, "direct")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 1 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    need = max(args.idle_counts) + 1000
    if "e" in args.workloads and want < need:
        log(f"open-file limit {want} is below {need}: (e) will open fewer sessions")

    bench = Bench(args)
    report = None
    try:
        bench.start_upstream()
        bench.start_nats()
        if "http-tunnel" in configs:
            bench.start_http_tunnel()
        else:
            bench.auditor_pid = None
        if "rathole" in configs:
            bench.start_rathole()
        if "bore" in configs:
            bench.start_bore()
        bench.targets = {k: bench.targets[k] for k in CONFIGS if k in bench.targets}
        started = time.monotonic()
        load_before = wait_for_quiet(args.quiet_load, args.quiet_wait) if not args.hold else load_average()
        if args.hold:
            hold(bench)
            return 0
        if any(k in LOAD_WORKLOADS for k in args.workloads):
            bench.warm_up()
            bench.run_load_workloads()
        if "d" in args.workloads:
            bench.run_big()
        if "f" in args.workloads:
            bench.run_startup()
        if "e" in args.workloads and "http-tunnel" in configs:
            bench.run_idle()
        if "i" in args.workloads and "http-tunnel" in configs:
            try:
                bench.run_admission()
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                # Loudly: a guarded tunnel that admits what it should refuse, or a run with refused
                # requests, means the figures do not measure what they claim.
                log(f"(i) FAILED: {e}")
                bench.results.setdefault("i", {"title": "admission: rate limits, policies and quotas on / off"})["error"] = str(e)
        if "j" in args.workloads and "http-tunnel" in configs:
            try:
                bench.run_auditor_throughput()
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                log(f"(j) FAILED: {e}")
                bench.results["j"] = {"title": "auditor throughput", "error": str(e)}
        if "k" in args.workloads and "http-tunnel" in configs:
            try:
                bench.run_ack_cost()
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                log(f"(k) FAILED: {e}")
                bench.results.setdefault("k", {"title": "acknowledgement cost"})["error"] = str(e)
        if "l" in args.workloads and "http-tunnel" in configs:
            try:
                bench.run_inspector_cost()
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as e:
                log(f"(l) FAILED: {e}")
                bench.results.setdefault("l", {"title": "inspector cost"})["error"] = str(e)
        if "m" in args.workloads and "http-tunnel" in configs:
            try:
                bench.run_encryption()
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                log(f"(m) FAILED: {e}")
                bench.results.setdefault("m", {"title": "encryption at rest"})["error"] = str(e)
        if "n" in args.workloads and "http-tunnel" in configs:
            try:
                bench.run_traces()
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                log(f"(n) FAILED: {e}")
                bench.results.setdefault("n", {"title": "traces"})["error"] = str(e)
        # Last: the recordings it leaves in JetStream and its two clients touch no other workload.
        if "h" in args.workloads and "http-tunnel" in configs:
            try:
                bench.run_recording()
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                # E.g. a commit from before recording (--ref): keep the other workloads' results.
                log(f"(h) failed: {e}")
                bench.results["h"] = {"title": "recording on / off, and replay", "error": str(e)}
        report = {
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": args.command,
            "git": args.git,
            "machine": bench.machine(),
            "settings": {
                "rounds": args.rounds,
                "duration_s": args.duration,
                "loadgen": args.loadgen,
                "upstream_threads": args.upstream_threads,
                "nats_max_payload": "8MB",
                "workloads": args.workloads,
                "configs": list(bench.targets),
                "idle_cpu_window_s": args.idle_cpu_window,
                "replay_limit": args.replay_limit,
                "replay_concurrency": args.replay_concurrency,
                "replay_rounds": args.replay_rounds,
                "audit_records": args.audit_records,
                "audit_batch": args.audit_batch,
                "inspect_idle_window_s": args.inspect_idle_window,
                "trace_sample_ratio": args.trace_sample_ratio,
                "inspect_fill": args.inspect_fill,
            },
            "results": bench.results,
            "load_average_before": load_before,
            "foreign_cpu_cores": foreign_summary(bench.results),
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
        bench.procs.stop_all()
        if report is None or args.keep_logs:
            log(f"process logs kept in {bench.workdir}")
        else:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results_dir / f"bench-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    print(f"\nhttp-tunnel benchmark, {report['when']}, git {report['git'] or '?'}")
    print(f"machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_gib']} GiB, kernel {m['kernel']}")
    print(f"tools: {m['loadgen']}; {m['nats_server']}; {m['rathole']}; {m['bore']}")
    print(f"settings: {args.rounds} rounds x {args.duration:g} s per run, medians; nats max_payload 8MB")
    fc = report["foreign_cpu_cores"]
    if fc:
        print(
            f"other load: 1-min load average {report['load_average_before']:.2f} before; CPU used by processes outside "
            f"the benchmark during load runs: median {fc['median']:.2f}, max {fc['max']:.2f} cores"
        )
    print()
    print(table(report))
    print(f"\nfull results: {path}")
    failed = [k for k in ("i", "j", "k") if "error" in report["results"].get(k, {})]
    for k in failed:
        print(f"\n({k}) FAILED: {report['results'][k]['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
