#!/usr/bin/env python3
"""Host-side helpers of deploy/compose-test.sh (standard library only).

  serve   --port P --marker M                  the local service behind the tunnel: 200 + marker
  balance --port P --upstream H:P ...          a TCP balancer in front of the session-hosts
  load    --url U ... --out F [--every S]      steady traffic, one line per request into F
  report  --requests F --events F              sent, failed, and the recovery after each event

The balancer stands in for the load balancer of a real deployment: the client takes a single
--server URL, so it connects here, and each new connection goes to the next session-host in
turn, skipping one that refuses (a stopped container's port refuses at once).
"""

import argparse
import asyncio
import http.server
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

CONNECT_TIMEOUT = 1.0  # seconds to reach an upstream before trying the next one
REQUEST_TIMEOUT = 5.0  # seconds for one request of the load, answer included


def serve(args):
    body = f"<p>marker: {args.marker}</p>\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (the http.server naming)
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


def balance(args):
    upstreams = [u.rsplit(":", 1) for u in args.upstream]
    state = {"next": 0, "conns": 0}

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(client_r, client_w):
        state["conns"] += 1
        conn = state["conns"]
        start = state["next"]
        state["next"] = (start + 1) % len(upstreams)
        for i in range(len(upstreams)):
            host, port = upstreams[(start + i) % len(upstreams)]
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as err:
                print(f"{time.time():.3f} conn {conn}: {host}:{port} refused ({err})", flush=True)
                continue
            print(f"{time.time():.3f} conn {conn}: -> {host}:{port}", flush=True)
            try:
                await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
            except asyncio.CancelledError:  # the balancer stops
                return
            print(f"{time.time():.3f} conn {conn}: closed", flush=True)
            return
        client_w.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", args.port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


def load(args):
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    out = open(args.out, "a", buffering=1)
    # Straight to the ingresses, whatever http_proxy says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def worker(url):
        next_at = time.monotonic()
        while not stop.is_set():
            started = time.time()
            status, ok = 0, False
            try:
                with opener.open(url, timeout=REQUEST_TIMEOUT) as resp:
                    status = resp.status
                    ok = status == 200 and args.marker.encode() in resp.read()
            except urllib.error.HTTPError as err:
                status = err.code
            except (OSError, ValueError):
                status = 0
            line = json.dumps({"t0": started, "t1": time.time(), "url": url, "status": status, "ok": ok})
            with lock:
                out.write(line + "\n")
            next_at += args.every
            stop.wait(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=worker, args=(u,)) for u in args.url]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def report(args):
    reqs = [json.loads(line) for line in open(args.requests) if line.strip()]
    reqs.sort(key=lambda r: r["t1"])
    events = [json.loads(line) for line in open(args.events) if line.strip()]
    failed = [r for r in reqs if not r["ok"]]
    result = {"sent": len(reqs), "failed": len(failed), "events": []}
    for i, ev in enumerate(events):
        end = events[i + 1]["t"] if i + 1 < len(events) else float("inf")
        # Requests that ended after this stop and before the next one.
        window = [r for r in reqs if ev["t"] <= r["t1"] < end]
        bad = [r for r in window if not r["ok"]]
        if bad:
            last_bad = max(r["t1"] for r in bad)
            after = [r["t1"] for r in window if r["ok"] and r["t1"] > last_bad]
            recovery = (min(after) - ev["t"]) if after else None
        else:
            recovery = 0.0
        result["events"].append(
            {
                "event": ev["what"],
                "sent": len(window),
                "failed": len(bad),
                "statuses": sorted({r["status"] for r in bad}),
                "recovery_secs": None if recovery is None else round(recovery, 2),
            }
        )
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--marker", required=True)
    p = sub.add_parser("balance")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", action="append", required=True)
    p = sub.add_parser("load")
    p.add_argument("--url", action="append", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--marker", required=True)
    p.add_argument("--every", type=float, default=0.02, help="seconds between requests per URL")
    p = sub.add_parser("report")
    p.add_argument("--requests", required=True)
    p.add_argument("--events", required=True)
    args = parser.parse_args()
    {"serve": serve, "balance": balance, "load": load, "report": report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
