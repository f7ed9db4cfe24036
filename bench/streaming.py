#!/usr/bin/env python3
"""Streaming figures of http-tunnel, in one run on one machine.

  python3 bench/streaming.py [--bin-dir target/release] [--gib 2]

Starts nats-server, the auditor, a session-host, an ingress, a local service (this script,
threaded) and a `tunnel` client, then measures:

  1. an upload and a download of --gib GiB through one request each, with the SHA-256 computed
     at both ends (they must match), MB/s, and the peak RSS (VmHWM) of ingress, session-host and
     client during each transfer (each transfer runs against freshly started processes);
  2. the delay of server-sent events: the local service sends an event every 100 ms carrying its
     send time; the public reader records when each arrives (p50/p99 over 100 events);
  3. small-request latency (sequential GETs on one connection) alone, then during a 1 GiB
     download on the same tunnel (p50/p99).

Prints a table and writes bench/results/streaming-<time>.json.
"""

import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = bytes((i * 31 + 7) % 251 for i in range(1 << 20))  # 1 MiB, repeated


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in separate writes: without this, Nagle holds the body back until the
    # client's delayed ACK (40 ms), which would be measured as tunnel latency.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/download/"):
            mib = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("content-length", str(mib << 20))
            self.end_headers()
            for _ in range(mib):
                self.wfile.write(BLOCK)
        elif self.path == "/sse":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(100):
                event = f"data: {i} {time.time():.6f}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                time.sleep(0.1)
            self.wfile.write(b"0\r\n\r\n")
        else:
            body = b"ok"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_POST(self):
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    digest.update(chunk)
                    total += len(chunk)
                    remaining -= len(chunk)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("content-length", "0"))
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                digest.update(chunk)
                total += len(chunk)
                remaining -= len(chunk)
        body = f"{total} {digest.hexdigest()}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class System:
    """nats-server, auditor, session-host, ingress and a tunnel client, on fresh ports."""

    def __init__(self, bin_dir, nats_bin, upstream_port, workdir):
        self.bin_dir, self.nats_bin, self.upstream_port, self.workdir = bin_dir, nats_bin, upstream_port, workdir
        self.procs = {}

    def start(self):
        nats_port, self.ingress_port, host_port, aud_port = free_port(), free_port(), free_port(), free_port()
        store = tempfile.mkdtemp(dir=self.workdir)
        nats_url = f"nats://127.0.0.1:{nats_port}"
        logs = open(os.path.join(self.workdir, "services.log"), "ab")
        # Anonymous session-host, explicitly: this measures streaming, not admission.
        env = dict(os.environ, RUST_LOG="warn", NO_COLOR="1", TUNNEL_AUTH="anonymous")

        def spawn(name, args):
            self.procs[name] = subprocess.Popen(args, stdout=logs, stderr=logs, env=env)

        spawn("nats-server", [self.nats_bin, "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(nats_port)])
        wait_port(nats_port)
        b = lambda n: os.path.join(self.bin_dir, n)  # noqa: E731
        spawn("auditor", [b("tunnel-auditor"), "--nats", nats_url, "--listen", f"127.0.0.1:{aud_port}"])
        spawn("session-host", [b("tunnel-session-host"), "--nats", nats_url, "--listen", f"127.0.0.1:{host_port}",
                               "--public-url", f"http://{{name}}.localhost:{self.ingress_port}"])
        spawn("ingress", [b("tunnel-ingress"), "--nats", nats_url, "--listen", f"127.0.0.1:{self.ingress_port}",
                          "--domain", "localhost"])
        wait_port(host_port)
        wait_port(self.ingress_port)
        client = subprocess.Popen([b("tunnel"), "http", str(self.upstream_port), "--server",
                                   f"ws://127.0.0.1:{host_port}", "--name", "stream"],
                                  stdout=subprocess.PIPE, stderr=logs, env=env)
        self.procs["client"] = client
        ready = json.loads(client.stdout.readline())
        assert ready["event"] == "ready", ready
        threading.Thread(target=lambda: [None for _ in client.stdout], daemon=True).start()
        return self

    def connection(self):
        return http.client.HTTPConnection("127.0.0.1", self.ingress_port, timeout=600)

    def headers(self):
        return {"Host": f"stream.localhost:{self.ingress_port}"}

    def peak_rss_mib(self):
        peaks = {}
        for name in ("ingress", "session-host", "client"):
            with open(f"/proc/{self.procs[name].pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peaks[name] = round(int(line.split()[1]) / 1024, 1)
        return peaks

    def stop(self):
        for proc in reversed(list(self.procs.values())):
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_port(port, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def download(system, mib):
    conn = system.connection()
    started = time.time()
    conn.request("GET", f"/download/{mib}", headers=system.headers())
    response = conn.getresponse()
    digest, total = hashlib.sha256(), 0
    while chunk := response.read(1 << 20):
        digest.update(chunk)
        total += len(chunk)
    seconds = time.time() - started
    expected = hashlib.sha256()
    for _ in range(mib):
        expected.update(BLOCK)
    return {"bytes": total, "seconds": round(seconds, 2), "mb_per_s": round(total / seconds / 1e6, 1),
            "sha256_received": digest.hexdigest(), "sha256_sent": expected.hexdigest(),
            "match": digest.hexdigest() == expected.hexdigest() and total == mib << 20}


def upload(system, mib):
    sent = hashlib.sha256()

    def body():
        for _ in range(mib):
            sent.update(BLOCK)
            yield BLOCK

    conn = system.connection()
    started = time.time()
    conn.request("POST", "/upload", body=body(), headers=dict(system.headers(), **{"Transfer-Encoding": "chunked"}),
                 encode_chunked=True)
    answer = conn.getresponse().read().decode()
    seconds = time.time() - started
    total, received = answer.split()
    return {"bytes": int(total), "seconds": round(seconds, 2), "mb_per_s": round(int(total) / seconds / 1e6, 1),
            "sha256_sent": sent.hexdigest(), "sha256_received": received,
            "match": received == sent.hexdigest() and int(total) == mib << 20}


def sse_delays(system):
    conn = system.connection()
    conn.request("GET", "/sse", headers=system.headers())
    response = conn.getresponse()
    delays, buffer = [], b""
    while chunk := response.read1(65536):
        now = time.time()
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            sent = float(event.split()[-1])
            delays.append((now - sent) * 1000)
    return delays


def small_latencies(system, seconds):
    conn = system.connection()
    latencies, end = [], time.time() + seconds
    while time.time() < end:
        started = time.perf_counter()
        conn.request("GET", "/small", headers=system.headers())
        conn.getresponse().read()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def quantiles(values):
    values = sorted(values)
    pick = lambda q: round(values[min(len(values) - 1, int(q * len(values)))], 2)  # noqa: E731
    return {"count": len(values), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(values[-1], 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    parser.add_argument("--gib", type=int, default=2)
    args = parser.parse_args()
    nats_bin = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server")
    if not nats_bin:
        nats_bin = subprocess.check_output([os.path.join(ROOT, "scripts", "ensure-nats-server.sh")], text=True).strip()
    workdir = tempfile.mkdtemp(prefix="http-tunnel-streaming-")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = upstream.server_address[1]
    mib = args.gib << 10
    results = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gib": args.gib,
               "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
    for name, run in (("download", download), ("upload", upload)):
        system = System(args.bin_dir, nats_bin, port, workdir).start()
        try:
            results[name] = run(system, mib)
            results[name]["peak_rss_mib"] = system.peak_rss_mib()
        finally:
            system.stop()
    system = System(args.bin_dir, nats_bin, port, workdir).start()
    try:
        results["sse_delay"] = quantiles(sse_delays(system))
        results["small_alone"] = quantiles(small_latencies(system, 5))
        transfer = threading.Thread(target=download, args=(system, 1024))
        transfer.start()
        time.sleep(0.5)
        results["small_during_1gib"] = quantiles(small_latencies(system, 5))
        transfer.join()
    finally:
        system.stop()
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", time.strftime("streaming-%Y%m%d-%H%M%S.json"))
    with open(path, "w") as out:
        json.dump(results, out, indent=1)
    for name in ("download", "upload"):
        r = results[name]
        print(f"{args.gib} GiB {name}: {r['mb_per_s']} MB/s, SHA-256 match: {r['match']}, peak RSS MiB: {r['peak_rss_mib']}")
    print(f"SSE event delay (100 events, 100 ms apart): {results['sse_delay']}")
    print(f"small GET, alone:          {results['small_alone']}")
    print(f"small GET, during 1 GiB:   {results['small_during_1gib']}")
    print(f"written to {path}")
    ok = results["download"]["match"] and results["upload"]["match"]
    shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
