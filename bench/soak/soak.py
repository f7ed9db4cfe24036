#!/usr/bin/env python3
"""Soak test of http-tunnel: the whole system under mixed traffic for a long time, watching each
process for growth (memory, file descriptors) and every exchange for errors.

Run through bench/soak/run.sh, which builds the binaries and passes their paths here. Everything
runs on this machine, on loopback, on free ports:

  nats-server (JetStream)   the auditor   two session-hosts (account tokens)   one ingress
  bench-upstream (bench/upstream) as the local service of every tunnel
  tunnel clients: soak-steady-1 on host 1, soak-steady-2 on host 2 (--record), for the whole run;
  soak-churn-<n>, one more every --churn-every, on either host, every other one with --record,
  each stopped once two newer ones serve.

Traffic, all public, through the ingress, by host (<name>.localhost) and by path (/t/<name>/) in
turn (see traffic.py): --rate requests per second over all serving tunnels (small GETs and POSTs,
1 KiB both ways, and a --large-share of --large-mib MiB downloads and uploads, every body checked),
--sse event streams and --ws WebSocket echo sessions on the steady tunnels, each reopened every
--session-secs. A churn tunnel is withdrawn from the traffic and its requests finished before its
client is stopped; then it must answer 502 tunnel_offline.

Measured: each component's RSS, open file descriptors (/proc/<pid>/fd) and CPU time (utime +
stime) every --sample-every seconds (bench/results/soak-<time>.csv, as it runs), and at two
points at rest, after the warm-up and at the end: requests paused and finished, our idle
connections closed, churn held, SETTLE_SECS waited. The verdict fails on any error (failed or
wrong request, broken session, client reconnect, churn failure, records dropped, audit records
missing), on a component that exited, on descriptors grown by more than --fd-growth between the
two points at rest, and on RSS grown by more than both --rss-growth-mib and --rss-growth-pct
between the medians of the first and the last windows of the measured time (RSS_WINDOW_SHARE).
docs/benchmarks.md#soak says why these thresholds.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

# bench/bench.py and traffic.py are imported from the tree: no __pycache__ left in it.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench  # noqa: E402  (bench/bench.py: Procs, free_port, cpu_seconds, rss_kib, wait_until, ...)
import traffic  # noqa: E402

DOMAIN = "localhost"
ACCOUNT = "soak"
STEADY = [("soak-steady-1", 0, False), ("soak-steady-2", 1, True)]  # (name, host index, --record)
CHURN_ALIVE = 2  # churn tunnels serving at once, besides the steady ones
SETTLE_SECS = 3.0  # wait at rest before sampling: connections closed by us are gone on their side
SSE_INTERVAL_MS = 1000
READY_SECS = 30.0
# RSS is compared between medians over a window at the start and one at the end of the measured
# time (a share of it, at least a minimum, at most a quarter): nats-server's RSS swings by tens
# of MiB from one sample to the next with its garbage collections, a single sample each side
# would be noise.
RSS_WINDOW_SHARE = 0.1
RSS_WINDOW_MIN_SECS = 60.0
# Shortest measured time whose RSS trend is shown: over less, caches still filling look like a
# leak of hundreds of MiB an hour.
TREND_MIN_SECS = 600
OFFLINE_SECS = 10.0  # a stopped tunnel must answer tunnel_offline within this
# Wait for the answer of a request to a stopped tunnel: past the ingress's 20 s stream idle
# timeout, so that a request lost on the way shows as the 504 the public client gets.
PROBE_SECS = 30.0
# What a stopped tunnel may answer before tunnel_offline: the session-host refuses the requests
# NATS routed to it before it saw the unsubscription (docs/errors.md, tunnel_disconnected).
LEAVING_ANSWER = (502, "tunnel_disconnected")


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def seconds(text: str) -> float:
    """`90`, `90s`, `2m`, `1.5h` -> seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 20m, 1h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# --------------------------------------------------------------------------------------------
# the system


class Client:
    """One `tunnel http` process and what it reported (its JSON lines), read as they come."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path):
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.offset = 0
        self.events = collections.Counter()  # event -> count; `request` events counted by error code

    def read_events(self) -> collections.Counter:
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a log line on stderr
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind == "request":
                if event.get("error"):
                    self.events[f"request error {event['error']}"] += 1
            elif kind:
                self.events[kind] += 1
        return self.events

    def reconnects(self) -> int:
        return self.events["disconnected"] + self.events["reconnecting"] + self.events["resumed"]


class System:
    """Every process of the run, started on free ports, stopped in reverse order at the end."""

    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.procs = bench.Procs(workdir)
        self.bin = Path(args.bin_dir)
        self.components: dict[str, subprocess.Popen] = {}  # the processes judged for growth
        self.ports: dict[str, int] = {}
        # Held while a client starts and when everything stops: the churn thread starts no
        # client that the stopping would miss.
        self.lock = threading.Lock()
        self.stopping = False

    def start(self) -> None:
        upstream = self.procs.start("upstream", [self.args.upstream, "--threads", "2"])
        line = bench.wait_until("upstream", lambda: bench.first_line_matching(self.procs.log_of("upstream"), r"^listening "), 10, upstream)
        self.ports["upstream"] = int(line.rsplit(":", 1)[1])

        port, self.ports["nats-monitor"] = bench.free_port(), bench.free_port()
        store = self.workdir / "nats-store"
        shutil.rmtree(store, ignore_errors=True)
        conf = self.workdir / "nats.conf"
        # The limits of nats/dev.conf, on a free port, with the store in the work directory.
        conf.write_text(
            f"server_name: soak\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{self.ports['nats-monitor']}\n"
            "max_payload: 1MB\nmax_pending: 64MB\n"
            f'jetstream {{\n  store_dir: "{store}"\n  max_memory_store: 256MB\n  max_file_store: 4GB\n}}\n'
        )
        nats = self.procs.start("nats-server", [self.args.nats_server, "-c", str(conf)])
        bench.wait_port(port, proc=nats)
        self.nats_url = f"nats://127.0.0.1:{port}"
        self.components["nats-server"] = nats

        self.service("auditor", "tunnel-auditor", [])
        self.admin("account", "create", ACCOUNT)
        created = self.admin("--json", "token", "create", ACCOUNT, "--name", "soak-*")
        self.token = json.loads(created.splitlines()[0])["token"]
        self.ports["ingress"] = bench.free_port()
        public_url = f"http://{{name}}.{DOMAIN}:{self.ports['ingress']}"
        for i in (1, 2):
            self.service(f"session-host-{i}", "tunnel-session-host", ["--public-url", public_url])
        self.service(
            "ingress",
            "tunnel-ingress",
            ["--domain", DOMAIN],
            port=self.ports["ingress"],
            # No load balancer in front: nothing to wait for before it stops accepting.
            env={"TUNNEL_UNREADY_BEFORE_STOP_SECS": "0"},
        )
        self.steady = [self.start_client(name, host, record) for name, host, record in STEADY]
        for client in self.steady:
            self.components[f"client {client.name}"] = client.proc
        log(f"up: ingress 127.0.0.1:{self.ports['ingress']}, hosts {self.ports['session-host-1']} and {self.ports['session-host-2']}, {self.nats_url}; logs in {self.workdir}")

    def service(self, name: str, binary: str, extra: list[str], port: int | None = None, env: dict | None = None) -> None:
        port = port or bench.free_port()
        proc = self.procs.start(
            name,
            [str(self.bin / binary), "--nats", self.nats_url, "--listen", f"127.0.0.1:{port}", *extra],
            env={"NO_COLOR": "1", **(env or {})},
        )
        bench.wait_until(name, lambda: bench.http_status(f"http://127.0.0.1:{port}/readyz") == 200, 60, proc)
        self.components[name] = proc
        self.ports[name] = port

    def admin(self, *argv: str) -> str:
        done = subprocess.run([str(self.bin / "tunnel"), "admin", "--nats", self.nats_url, *argv], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"tunnel admin {' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def start_client(self, name: str, host: int, record: bool) -> Client:
        """Starts `tunnel http` for `name` on session-host `host` (0 or 1); waits for `ready`."""
        argv = [
            str(self.bin / "tunnel"), "http", str(self.ports["upstream"]),
            "--server", f"ws://127.0.0.1:{self.ports[f'session-host-{host + 1}']}",
            "--name", name, "--json",
        ] + (["--record"] if record else [])  # fmt: skip
        env = {"TUNNEL_TOKEN": self.token, "TUNNEL_STATE_DIR": str(self.workdir / "state"), "RUST_LOG": "warn"}
        with self.lock:
            if self.stopping:
                raise RuntimeError("stopping")
            proc = self.procs.start(f"client-{name}", argv, env=env)
        client = Client(name, proc, self.procs.log_of(f"client-{name}"))
        bench.wait_until(f"tunnel client {name}", lambda: client.read_events()["ready"], READY_SECS, proc)
        return client

    def stop_client(self, client: Client) -> int:
        self.procs.stop(client.proc, grace=15.0)
        client.read_events()
        return client.proc.returncode

    def public_answer(self, name: str, timeout: float) -> tuple[int | None, str]:
        """(status, x-tunnel-error) of `GET /t/<name>/small`; (None, the exception) on failure."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports['ingress']}/t/{name}/small")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
                return response.status, response.headers.get("x-tunnel-error") or "-"
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("x-tunnel-error") or "-"
        except OSError as e:
            return None, type(e).__name__

    def streams(self) -> dict[str, dict]:
        """Messages and bytes held in each JetStream stream (KV buckets included), from the
        nats-server's monitoring port: what its memory may grow with."""
        url = f"http://127.0.0.1:{self.ports['nats-monitor']}/jsz?streams=true"
        with urllib.request.urlopen(url, timeout=5) as response:
            jsz = json.load(response)
        return {
            stream["name"]: {"messages": stream["state"]["messages"], "bytes": stream["state"]["bytes"]}
            for account in jsz.get("account_details", [])
            for stream in account.get("stream_detail", [])
        }

    def metrics(self) -> dict[str, float]:
        """Every counter and gauge of the ingress, hosts and auditor: `component:name{labels}`."""
        values = {}
        for component in ("ingress", "session-host-1", "session-host-2", "auditor"):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[component]}/metrics", timeout=5) as response:
                for line in response.read().decode().splitlines():
                    if line and not line.startswith("#"):
                        key, _, value = line.rpartition(" ")
                        values[f"{component}:{key}"] = float(value)
        return values

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
        self.procs.stop_all()


def metric_sum(metrics: dict[str, float], prefix: str) -> float:
    """The sum of every series whose `component:name{labels}` starts with `prefix`."""
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


# --------------------------------------------------------------------------------------------
# churn


class Churn:
    """Tunnels joining and leaving: every `every` seconds one more client (alternating hosts,
    every other one recording); the oldest leaves once more than CHURN_ALIVE serve."""

    def __init__(self, system: System, tunnels: traffic.Tunnels, tally: traffic.Tally, every: float):
        self.system = system
        self.tunnels = tunnels
        self.tally = tally
        self.every = every
        self.live: list[Client] = []
        self.gone: list[Client] = []
        self.joined = 0
        # Times a stopped tunnel answered LEAVING_ANSWER before tunnel_offline: reported, not judged.
        self.leaving_answers = 0
        self.lock = threading.Lock()  # held by one join-and-leave step, and while sampling at rest
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="churn", daemon=True)

    def prime(self) -> None:
        while len(self.live) < CHURN_ALIVE:
            self.join()

    def loop(self) -> None:
        while not self.stopped.wait(self.every):
            with self.lock:
                if self.stopped.is_set():
                    return
                self.join()
                while len(self.live) > CHURN_ALIVE:
                    self.leave(self.live.pop(0))

    def join(self) -> None:
        self.joined += 1
        name = f"soak-churn-{self.joined}"
        try:
            client = self.system.start_client(name, self.joined % 2, record=self.joined % 2 == 0)
        except RuntimeError as e:
            self.tally.error("churn: client not ready", f"{name}: {e}")
            return
        self.live.append(client)
        self.tunnels.add(name)

    def leave(self, client: Client) -> None:
        if not self.tunnels.withdraw(client.name, timeout=120):
            self.tally.error("churn: requests still in flight after 120s", client.name)
        exit_code = self.system.stop_client(client)
        self.gone.append(client)
        if exit_code != 0:
            self.tally.error(f"churn: client exited with {exit_code}", client.name)
        deadline = time.monotonic() + OFFLINE_SECS
        while True:
            asked = time.monotonic()
            status, code = self.system.public_answer(client.name, PROBE_SECS)
            if (status, code) == (502, "tunnel_offline"):
                return
            if (status, code) != LEAVING_ANSWER:
                took = time.monotonic() - asked
                self.tally.error(f"churn: stopped tunnel answered {status} {code}", f"{client.name}, after {took:.1f}s")
                return
            self.leaving_answers += 1
            if time.monotonic() > deadline:
                self.tally.error("churn: stopped tunnel not offline", f"{client.name}, {OFFLINE_SECS:.0f}s after its client stopped")
                return
            time.sleep(0.2)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=180)

    def clients(self) -> list[Client]:
        return self.gone + self.live


# --------------------------------------------------------------------------------------------
# samples


def sockets_to(port: int) -> set[str]:
    """The inodes of this machine's TCP sockets connected to `port` on loopback."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:  # rem_address
                    inodes.add(fields[9])
    return inodes


def fd_links(pid: int) -> list[str]:
    """What each open descriptor of `pid` points to (`socket:[<inode>]`, a path, ...)."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass  # closed since the listing
    return links


def snapshot(components: dict[str, subprocess.Popen], upstream_port: int) -> dict[str, dict | None]:
    """RSS (KiB), open descriptors and CPU seconds of each component; None for one that exited.
    `pooled` counts the descriptors that are connections to the local service: a tunnel client
    keeps up to 256 of them idle for 60 s, as many as the last burst needed, so they are counted
    apart and not judged (a pool, not a leak; docs/configuration.md, fixed limits)."""
    upstream = sockets_to(upstream_port)
    taken = {}
    for name, proc in components.items():
        try:
            if proc.poll() is not None:
                raise FileNotFoundError
            links = fd_links(proc.pid)
            taken[name] = {
                "rss_kib": bench.rss_kib(proc.pid),
                "fds": len(links),
                "pooled": sum(link.startswith("socket:[") and link[8:-1] in upstream for link in links),
                "cpu_s": round(bench.cpu_seconds([proc.pid]), 2),
            }
        except FileNotFoundError:
            taken[name] = None
    return taken


class Series:
    """Samples over time: in memory for the report, and appended to a CSV file as they come, so
    that a run cut short still leaves its series."""

    def __init__(self, csv_path: Path, started: float):
        self.csv_path = csv_path
        self.started = started
        self.rows: list[dict] = []
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text("t_s,phase,component,rss_kib,fds,pooled,cpu_s\n")

    def add(self, phase: str, components: dict[str, dict | None], extra: dict) -> dict:
        t = round(time.monotonic() - self.started, 1)
        row = {"t_s": t, "phase": phase, "components": components, **extra}
        self.rows.append(row)
        with open(self.csv_path, "a") as f:
            for name, s in components.items():
                f.write(f"{t},{phase},{name},{s['rss_kib']},{s['fds']},{s['pooled']},{s['cpu_s']}\n" if s else f"{t},{phase},{name},,,,\n")
        return row


# --------------------------------------------------------------------------------------------
# the verdict


def rss_points(series: list[dict], name: str) -> list[tuple[float, int]]:
    """(time, RSS KiB) of `name` in every sample from the start at rest to the end at rest."""
    return [(row["t_s"], row["components"][name]["rss_kib"]) for row in series if row["phase"] != "warmup" and row["components"].get(name)]


def rss_windows(points: list[tuple[float, int]]) -> tuple[float, float, float]:
    """The medians of RSS over the first and over the last window of the measured time, and
    the window's width: RSS_WINDOW_SHARE of the time, at least RSS_WINDOW_MIN_SECS, at most a
    quarter of it (short runs)."""
    t0, t1 = points[0][0], points[-1][0]
    width = min(max(RSS_WINDOW_MIN_SECS, RSS_WINDOW_SHARE * (t1 - t0)), (t1 - t0) / 4)
    first = statistics.median(kib for t, kib in points if t <= t0 + width)
    last = statistics.median(kib for t, kib in points if t >= t1 - width)
    return first, last, width


def rss_trend(points: list[tuple[float, int]]) -> float | None:
    """The least-squares slope of RSS over the second half of the measured time (past caches
    and pools filling up), in MiB per hour; None under TREND_MIN_SECS measured. Shown, not
    judged: one garbage collection of nats-server moves it more than a slow leak would."""
    t0, t1 = points[0][0], points[-1][0]
    if t1 - t0 < TREND_MIN_SECS:
        return None
    second_half = [(t, kib) for t, kib in points if t >= (t0 + t1) / 2]
    slope = statistics.linear_regression([t for t, _ in second_half], [kib for _, kib in second_half]).slope
    return round(slope * 3600 / 1024, 1)


def judge(start: dict, end: dict, elapsed: float, series: list[dict], args) -> dict[str, dict]:
    """Per component: RSS over the first and last windows, descriptors and CPU time at rest at
    the start and the end, and what fails the verdict."""
    rows = {}
    for name, s in start.items():
        e = end.get(name)
        if s is None or e is None:
            rows[name] = {"start": s, "end": e, "failures": ["exited"]}
            continue
        points = rss_points(series, name)
        rss_first, rss_last, width = rss_windows(points)
        rss_growth = rss_last - rss_first
        fd_growth = (e["fds"] - e["pooled"]) - (s["fds"] - s["pooled"])
        cpu = e["cpu_s"] - s["cpu_s"]
        failures = []
        if rss_growth > args.rss_growth_mib * 1024 and rss_growth > rss_first * args.rss_growth_pct / 100:
            failures.append(f"RSS +{rss_growth / 1024:.1f} MiB")
        if fd_growth > args.fd_growth:
            failures.append(f"fds +{fd_growth}")
        rows[name] = {
            "start": s,
            "end": e,
            "rss_first_kib": rss_first,
            "rss_last_kib": rss_last,
            "rss_window_s": round(width),
            "rss_growth_kib": rss_growth,
            "rss_trend_mib_per_h": rss_trend(points),
            "fd_growth": fd_growth,
            "cpu_s": round(cpu, 2),
            "cpu_pct": round(100 * cpu / elapsed, 2),
            "failures": failures,
        }
    return rows


def component_table(rows: dict[str, dict], elapsed: float) -> str:
    out = [
        f"{'component':<22} {'RSS first':>10} {'RSS last':>10} {'growth':>9} {'trend/h':>9} {'fds':>9} {'CPU s':>8} {'CPU %':>6}  verdict",
    ]
    width = None
    for name, r in rows.items():
        if r["start"] is None or r["end"] is None:
            out.append(f"{name:<22} {'':>10} {'':>10} {'':>9} {'':>9} {'':>9} {'':>8} {'':>6}  FAIL: exited")
            continue
        s, e, width = r["start"], r["end"], r["rss_window_s"]
        trend = "" if r["rss_trend_mib_per_h"] is None else f"{r['rss_trend_mib_per_h']:+.1f} MiB"
        verdict = "FAIL: " + ", ".join(r["failures"]) if r["failures"] else "ok"
        out.append(
            f"{name:<22} {r['rss_first_kib'] / 1024:>6.1f} MiB {r['rss_last_kib'] / 1024:>6.1f} MiB {r['rss_growth_kib'] / 1024:>+5.1f} MiB"
            f" {trend:>9} {s['fds'] - s['pooled']:>4}>{e['fds'] - e['pooled']:<4} {r['cpu_s']:>8.1f} {r['cpu_pct']:>5.1f}%  {verdict}"
        )
    out.append(
        f"(over {elapsed / 60:.1f} min measured. RSS first, last: medians of the samples in the first and the last {width or '?'} s; "
        "trend: slope of RSS over the second half, per hour, not judged, shown from 10 min measured; fds: open descriptors at rest "
        "at the start and the end, but the idle connections to the local service; CPU: over the measured time, % of one core)"
    )
    return "\n".join(out)


def machine(nats_server: str) -> dict:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    with open("/proc/meminfo") as f:
        mem_kib = next((int(line.split()[1]) for line in f if line.startswith("MemTotal:")), 0)
    version = subprocess.run([nats_server, "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kib / 2**20, 1), "kernel": platform.release(), "nats_server": version}


# --------------------------------------------------------------------------------------------
# the run


class Run:
    """One soak run: the system, the traffic, the samples and the report."""

    def __init__(self, args):
        self.args = args
        self.started = time.monotonic()
        self.workdir = Path(args.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        self.system = System(args, self.workdir)
        self.tally = traffic.Tally(self.started)
        self.tunnels = traffic.Tunnels()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.report_path = Path(args.results_dir) / f"soak-{stamp}.json"
        self.series = Series(Path(args.results_dir) / f"soak-{stamp}.csv", self.started)

    def go(self) -> dict:
        args = self.args
        self.system.start()
        for client in self.system.steady:
            self.tunnels.add(client.name)
        self.churn = Churn(self.system, self.tunnels, self.tally, args.churn_every)
        self.churn.prime()
        ingress = traffic.Ingress(self.system.ports["ingress"], DOMAIN)
        steady_names = [name for name, _, _ in STEADY]
        self.requests = traffic.Requests(
            ingress, self.tunnels, self.tally, args.rate, args.large_share, int(args.large_mib * 2**20), args.workers
        )
        self.sessions = [
            traffic.Sessions("sse", args.sse, ingress, steady_names, self.tally, args.session_secs, SSE_INTERVAL_MS),
            traffic.Sessions("ws", args.ws, ingress, steady_names, self.tally, args.session_secs, SSE_INTERVAL_MS),
        ]
        self.requests.start()
        for s in self.sessions:
            s.start()
        self.churn.thread.start()

        log(f"warm-up: {args.warmup:.0f}s")
        self.watch("warmup", time.monotonic() + args.warmup)
        start = self.at_rest("start")
        log(f"measuring: {args.duration / 60:.1f} min at {args.rate:g} req/s, {args.sse} SSE and {args.ws} WebSocket sessions, a tunnel joining every {args.churn_every:.0f}s")
        self.watch("run", time.monotonic() + args.duration)
        end = self.at_rest("end")

        self.requests.stop()
        for s in self.sessions:
            s.stop()
        self.churn.stop()
        elapsed = end["t_s"] - start["t_s"]
        components = judge(start["components"], end["components"], elapsed, self.series.rows, args)
        return self.report(components, elapsed, start["streams"], end["streams"])

    def watch(self, phase: str, until: float) -> None:
        """Samples every --sample-every seconds until `until`; stops early if a component exits."""
        next_log = time.monotonic() + 60
        while time.monotonic() < until:
            time.sleep(min(self.args.sample_every, max(0.0, until - time.monotonic())))
            row = self.sample(phase)
            dead = [name for name, s in row["components"].items() if s is None]
            if dead:
                log(f"component exited: {', '.join(dead)}; ending the run")
                return
            if time.monotonic() >= next_log:
                next_log += 60
                t = self.tally.totals()
                log(f"{phase} t={row['t_s']:.0f}s: {t['ok_total']} ok, {t['errors_total']} errors, {t['not_sent']} not sent, small GET p99 {row['small_get']['p99_ms']} ms")

    def sample(self, phase: str) -> dict:
        totals = self.tally.totals()
        extra = {
            "load1": bench.load_average(),
            "ok_total": totals["ok_total"],
            "errors_total": totals["errors_total"],
            "small_get": self.tally.take_latencies(),
        }
        for client in self.system.steady:
            client.read_events()
        extra["reconnects"] = sum(client.reconnects() for client in self.system.steady)
        return self.series.add(phase, snapshot(self.system.components, self.system.ports["upstream"]), extra)

    def at_rest(self, phase: str) -> dict:
        """A sample with no request of ours in flight, our idle connections closed and no
        tunnel joining or leaving (SSE and WebSocket sessions go on: as many are open each time)."""
        with self.churn.lock:
            if not self.requests.pause():
                self.tally.error("requests still in flight after 120s at rest")
            time.sleep(SETTLE_SECS)
            row = self.sample(phase)
            row["streams"] = self.system.streams()
            if phase != "end":
                self.requests.resume()
        return row

    def report(self, components: dict, elapsed: float, streams_start: dict, streams_end: dict) -> dict:
        metrics = self.settled_metrics()
        totals = self.tally.totals()
        clients = {c.name: dict(c.read_events()) for c in self.system.steady + self.churn.clients()}
        reconnects = sum(c.reconnects() for c in self.system.steady + self.churn.clients())
        client_errors = sum(n for c in self.system.steady + self.churn.clients() for k, n in c.events.items() if k.startswith("request error") or k == "error")
        checks = {
            "failed requests and sessions": totals["errors_total"],
            "client reconnects": reconnects,
            "client errors": client_errors,
            "audit records dropped at the ingress": metric_sum(metrics, "ingress:ingress_audit_dropped_total"),
            "stream frames dropped": metric_sum(metrics, "ingress:ingress_stream_frames_dropped_total")
            + metric_sum(metrics, "session-host-1:host_stream_frames_dropped_total")
            + metric_sum(metrics, "session-host-2:host_stream_frames_dropped_total"),
            "recordings dropped": metric_sum(metrics, "session-host-1:host_recordings_dropped_total") + metric_sum(metrics, "session-host-2:host_recordings_dropped_total"),
            "access events dropped": metric_sum(metrics, "session-host-1:host_access_events_dropped_total")
            + metric_sum(metrics, "session-host-2:host_access_events_dropped_total"),
            "auditor store failures": metric_sum(metrics, "auditor:auditor_store_failures_total") + metric_sum(metrics, "auditor:auditor_undecodable_total"),
            "audit records not counted (ingress - auditor)": metric_sum(metrics, "ingress:ingress_requests_total") - metric_sum(metrics, "auditor:auditor_records_total"),
        }
        failures = [f"{name}: {', '.join(r['failures'])}" for name, r in components.items() if r["failures"]]
        failures += [f"{what}: {n:g}" for what, n in checks.items() if n]
        args = self.args
        return {
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": args.command,
            "git": args.git,
            "machine": machine(args.nats_server),
            "settings": {
                "warmup_s": args.warmup,
                "duration_s": args.duration,
                "rate": args.rate,
                "large_mib": args.large_mib,
                "large_share": args.large_share,
                "sse_sessions": args.sse,
                "ws_sessions": args.ws,
                "session_secs": args.session_secs,
                "churn_every_s": args.churn_every,
                "workers": args.workers,
                "thresholds": {"rss_growth_mib": args.rss_growth_mib, "rss_growth_pct": args.rss_growth_pct, "fd_growth": args.fd_growth},
            },
            "measured_s": round(elapsed, 1),
            "components": components,
            "traffic": totals,
            "error_examples": self.tally.examples,
            "clients": clients,
            "churn": {"joined": self.churn.joined, "left": len(self.churn.gone), "leaving_answers": self.churn.leaving_answers},
            "streams": {"start": streams_start, "end": streams_end},
            "checks": checks,
            "metrics": {k: v for k, v in metrics.items() if k.split(":", 1)[1].startswith(("ingress_requests_total", "auditor_records_total", "host_recording", "host_sessions", "host_connections_refused"))},
            "harness_cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
            "series": self.series.rows,
            "verdict": {"passed": not failures, "failures": failures},
        }

    def settled_metrics(self) -> dict[str, float]:
        """The services' metrics once the auditor has counted every audit record (or 30 s)."""
        deadline = time.monotonic() + 30
        while True:
            metrics = self.system.metrics()
            missing = metric_sum(metrics, "ingress:ingress_requests_total") - metric_sum(metrics, "auditor:auditor_records_total")
            if missing <= 0 or time.monotonic() > deadline:
                return metrics
            time.sleep(0.5)


def print_report(report: dict) -> None:
    t = report["traffic"]
    m = report["machine"]
    print(f"\nhttp-tunnel soak, {report['when']}, git {report['git'] or '?'}")
    print(f"machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_gib']} GiB; {m['nats_server']}")
    s = report["settings"]
    print(
        f"settings: {s['warmup_s']:.0f}s warm-up, {report['measured_s'] / 60:.1f} min measured, {s['rate']:g} req/s "
        f"({s['large_share']:.0%} of {s['large_mib']:g} MiB), {s['sse_sessions']} SSE + {s['ws_sessions']} WebSocket sessions "
        f"of ~{s['session_secs']:.0f}s, a tunnel joining every {s['churn_every_s']:.0f}s ({report['churn']['joined']} joined, {report['churn']['left']} left)\n"
    )
    components = report["components"]
    print(component_table(components, report["measured_s"]))
    print(f"\ntraffic (whole run): {t['ok_total']} ok, {t['bytes_up'] / 2**20:.0f} MiB up, {t['bytes_down'] / 2**20:.0f} MiB down, {t['not_sent']} not sent (harness behind)")
    for kind, n in sorted(t["ok"].items()):
        print(f"  {kind:<22} {n}")
    for sort, n in sorted(t["messages"].items()):
        print(f"  {sort + ' messages':<22} {n}")
    print("errors:" + ("" if t["errors"] else " none"))
    for key, n in sorted(t["errors"].items(), key=lambda kv: -kv[1]):
        print(f"  {key:<50} {n}")
    leaving = report["churn"]["leaving_answers"]
    if leaving:
        print(f"stopped tunnels answered {LEAVING_ANSWER[0]} {LEAVING_ANSWER[1]} before tunnel_offline: {leaving} (not judged)")
    print("JetStream streams, at rest at the start -> the end:")
    start, end = report["streams"]["start"], report["streams"]["end"]
    for name in sorted(set(start) | set(end)):
        a, b = start.get(name, {"messages": 0, "bytes": 0}), end.get(name, {"messages": 0, "bytes": 0})
        print(f"  {name:<22} {a['messages']:>9} -> {b['messages']:<9} messages {a['bytes'] / 2**20:>8.1f} -> {b['bytes'] / 2**20:.1f} MiB")
    print("checks:")
    for what, n in report["checks"].items():
        print(f"  {what:<40} {n:g}")
    verdict = report["verdict"]
    print(f"\nverdict: {'PASS' if verdict['passed'] else 'FAIL'}")
    for f in verdict["failures"]:
        print(f"  {f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=seconds, default=seconds("2m"), help="measured time after the warm-up (90s, 20m, 1h; default 2m)")
    # nats-server's RSS climbs for about 5 minutes (Go heap, JetStream caches) before it levels
    # off and swings around ~75 MiB: a start sampled earlier reads that climb as growth.
    p.add_argument("--warmup", type=seconds, default=seconds("5m"), help="traffic before the first sample at rest (default 5m)")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second over all tunnels (default 50)")
    p.add_argument("--large-mib", type=float, default=4.0, help="size of the large downloads and uploads (default 4)")
    p.add_argument("--large-share", type=float, default=0.04, help="share of large requests, half each way (default 0.04)")
    p.add_argument("--sse", type=int, default=3, help="event streams open at once (default 3)")
    p.add_argument("--ws", type=int, default=3, help="WebSocket echo sessions open at once (default 3)")
    p.add_argument("--session-secs", type=float, default=60.0, help="life of one SSE or WebSocket session (+-25%%; default 60)")
    p.add_argument("--churn-every", type=seconds, default=seconds("30s"), help="a tunnel joins (and one leaves) this often (default 30s)")
    p.add_argument("--sample-every", type=seconds, default=seconds("10s"), help="sampling interval (default 10s)")
    p.add_argument("--workers", type=int, default=32, help="concurrent requests at most (default 32)")
    p.add_argument("--rss-growth-mib", type=float, default=20.0, help="RSS growth that fails, together with --rss-growth-pct (default 20)")
    p.add_argument("--rss-growth-pct", type=float, default=20.0, help="RSS growth in %% that fails, together with --rss-growth-mib (default 20)")
    p.add_argument("--fd-growth", type=int, default=10, help="growth in open descriptors that fails (default 10)")
    p.add_argument("--bin-dir", required=True, help="the release binaries of http-tunnel")
    p.add_argument("--upstream", required=True, help="the bench-upstream binary")
    p.add_argument("--nats-server", required=True)
    p.add_argument("--results-dir", required=True)
    p.add_argument("--workdir", required=True, help="logs and the JetStream store (emptied first)")
    p.add_argument("--git", default="")
    p.add_argument("--command", default="bench/soak/run.sh")
    args = p.parse_args()

    # SIGTERM and SIGHUP end the run as Ctrl-C does, through the `finally` below; SIGINT too
    # when started in the background, where the shell had it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    run = Run(args)
    try:
        report = run.go()
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    except (RuntimeError, OSError) as e:
        log(f"FAILED: {e}")
        return 2
    finally:
        # Ctrl-C again must not cut the stopping short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        run.system.stop()
        shutil.rmtree(run.workdir / "nats-store", ignore_errors=True)
        log(f"stopped everything; logs in {run.workdir}, series in {run.series.csv_path}")
    run.report_path.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"\nfull report: {run.report_path}")
    return 0 if report["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
