"""The public traffic of the soak test: requests at a steady rate, server-sent event streams and
WebSocket echo sessions, all through the ingress, each checked end to end.

Every outcome goes to one `Tally`: successes per kind, failures by a key naming what failed and
how (`small GET 502 tunnel_offline`, `sse broken: stalled`), with the first few examples timed.
The local service is `bench-upstream` (bench/upstream), whose bodies are known in advance, so
every byte that comes back is checked, not only the status.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import http.client
import os
import queue
import random
import socket
import struct
import threading
import time

# bench-upstream's bodies: `/bytes/<n>` for n > 100 repeats this 1 MiB chunk from its start.
UPSTREAM_CHUNK = bytes(ord("a") + i % 26 for i in range(1 << 20))
SMALL_BYTES = 100  # `/small`

# A pooled keep-alive connection idle this long is closed instead of reused: the ingress may
# close idle connections at its header read timeout (10 s), and a request sent on a connection
# the server is closing at that moment fails through no fault of the tunnel.
POOL_IDLE_SECS = 5.0
# Socket timeout of one request; a request slower than this counts as failed.
REQUEST_TIMEOUT_SECS = 60.0
# Share of requests sent on a new connection with `Connection: close`, the rest on keep-alive.
NEW_CONNECTION_SHARE = 0.1
# A stream or socket silent this long beyond its expected pace counts as stalled.
STALL_SECS = 15.0
# Interval between two WebSocket messages of a session, and the largest message.
WS_MESSAGE_INTERVAL_SECS = 0.5
WS_MAX_MESSAGE_BYTES = 16 << 10
# Examples of errors kept in the report (the counts are complete).
MAX_EXAMPLES = 30


def upstream_body(n: int) -> bytes:
    """What bench-upstream answers to `GET /bytes/<n>` (n > 100)."""
    whole, part = divmod(n, len(UPSTREAM_CHUNK))
    return UPSTREAM_CHUNK * whole + UPSTREAM_CHUNK[:part]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Tally:
    """Thread-safe counts of everything the traffic did."""

    def __init__(self, started: float):
        self.started = started
        self.lock = threading.Lock()
        self.ok = collections.Counter()  # request kind, or `sse session` and `ws session` -> successes
        self.messages = collections.Counter()  # `sse` or `ws` -> events read, messages echoed
        self.errors = collections.Counter()  # what failed and how -> count
        self.examples: list[dict] = []  # the first MAX_EXAMPLES errors, with time and detail
        self.bytes_up = 0
        self.bytes_down = 0
        self.not_sent = 0  # requests skipped because every worker was busy (the harness fell behind)
        self.latencies_ms: list[float] = []  # small GETs since the last `take_latencies`

    def success(self, kind: str, up: int = 0, down: int = 0, latency_ms: float | None = None) -> None:
        with self.lock:
            self.ok[kind] += 1
            self.bytes_up += up
            self.bytes_down += down
            if latency_ms is not None:
                self.latencies_ms.append(latency_ms)

    def error(self, key: str, detail: str = "") -> None:
        with self.lock:
            self.errors[key] += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append({"t_s": round(time.monotonic() - self.started, 1), "error": key, "detail": detail[:300]})

    def session(self, sort: str, messages: int) -> None:
        with self.lock:
            self.ok[f"{sort} session"] += 1
            self.messages[sort] += messages

    def skipped(self) -> None:
        with self.lock:
            self.not_sent += 1

    def take_latencies(self) -> dict:
        """p50 and p99 of the small GETs since the previous call, in ms."""
        with self.lock:
            values, self.latencies_ms = self.latencies_ms, []
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        return {"p50_ms": p50 and round(p50, 2), "p99_ms": p99 and round(p99, 2), "n": len(values)}

    def totals(self) -> dict:
        with self.lock:
            return {
                "ok": dict(self.ok),
                "ok_total": sum(self.ok.values()),
                "messages": dict(self.messages),
                "errors": dict(self.errors),
                "errors_total": sum(self.errors.values()),
                "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down,
                "not_sent": self.not_sent,
            }


class Tunnels:
    """The tunnel names that serve now, and the requests in flight to each, so that a tunnel is
    only stopped once nothing is on its way to it, and the processes are only sampled at rest
    once nothing is on its way at all."""

    def __init__(self):
        self.cond = threading.Condition()
        self.serving: list[str] = []
        self.in_flight = collections.Counter()
        self.paused = False

    def add(self, name: str) -> None:
        with self.cond:
            self.serving.append(name)

    def withdraw(self, name: str, timeout: float) -> bool:
        """Sends no more requests to `name`; waits for those in flight. False on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.serving.remove(name)
            while self.in_flight[name]:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def begin(self, rng: random.Random) -> str | None:
        """A serving tunnel for one more request, or None while paused."""
        with self.cond:
            if self.paused or not self.serving:
                return None
            name = rng.choice(self.serving)
            self.in_flight[name] += 1
            return name

    def end(self, name: str) -> None:
        with self.cond:
            self.in_flight[name] -= 1
            self.cond.notify_all()

    def pause(self, timeout: float) -> bool:
        """Begins no more requests and waits for those in flight. False on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.paused = True
            while sum(self.in_flight.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def resume(self) -> None:
        with self.cond:
            self.paused = False


class Ingress:
    """Where public requests go: the ingress's port and domain, by host or by path in turn."""

    def __init__(self, port: int, domain: str):
        self.port = port
        self.domain = domain

    def address(self, name: str, path: str, by_host: bool) -> tuple[str, str]:
        """(Host header, request target) for `path` on tunnel `name`."""
        if by_host:
            return f"{name}.{self.domain}:{self.port}", path
        return f"127.0.0.1:{self.port}", f"/t/{name}{path}"

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)


class Pool:
    """Keep-alive connections to the ingress, shared by the request workers."""

    def __init__(self, ingress: Ingress):
        self.ingress = ingress
        self.lock = threading.Lock()
        self.idle: list[tuple[float, http.client.HTTPConnection]] = []

    def get(self) -> http.client.HTTPConnection:
        now = time.monotonic()
        with self.lock:
            while self.idle:
                since, conn = self.idle.pop()
                if now - since < POOL_IDLE_SECS:
                    return conn
                conn.close()
        return self.ingress.connect(REQUEST_TIMEOUT_SECS)

    def put(self, conn: http.client.HTTPConnection) -> None:
        with self.lock:
            self.idle.append((time.monotonic(), conn))

    def close_all(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for _, conn in idle:
            conn.close()


# (kind, method, path, bytes sent, bytes expected back; None: the upload's acknowledgement)
SMALL_KINDS = [
    ("small GET", "GET", "/small", 0, SMALL_BYTES),
    ("1 KiB GET", "GET", "/bytes/1024", 0, 1024),
    ("1 KiB POST", "POST", "/upload", 1024, None),
]
SMALL_WEIGHTS = [55, 15, 30]


class Requests:
    """Requests at `rate` per second (open loop: sent on schedule, whatever the answers take),
    spread over the serving tunnels, by host and by path in turn, a share of them on new
    connections; `large_share` of them are downloads or uploads of `large_bytes`."""

    def __init__(self, ingress: Ingress, tunnels: Tunnels, tally: Tally, rate: float, large_share: float, large_bytes: int, workers: int):
        self.ingress = ingress
        self.tunnels = tunnels
        self.tally = tally
        self.rate = rate
        self.kinds = SMALL_KINDS + [
            ("large GET", "GET", f"/bytes/{large_bytes}", 0, large_bytes),
            ("large POST", "POST", "/upload", large_bytes, None),
        ]
        small = [w * (1 - large_share) / sum(SMALL_WEIGHTS) for w in SMALL_WEIGHTS]
        self.weights = small + [large_share / 2, large_share / 2]
        self.expected = {1024: upstream_body(1024), large_bytes: upstream_body(large_bytes)}
        self.upload = bytes(random.Random(1).getrandbits(8) for _ in range(1024)) * (large_bytes // 1024 + 1)
        self.pool = Pool(ingress)
        self.jobs: queue.Queue = queue.Queue(maxsize=workers)
        self.running = threading.Event()  # cleared while paused
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self.schedule, name="schedule", daemon=True)]
        self.threads += [threading.Thread(target=self.work, args=(i,), name=f"worker-{i}", daemon=True) for i in range(workers)]

    def start(self) -> None:
        self.running.set()
        for t in self.threads:
            t.start()

    def pause(self, timeout: float = 120.0) -> bool:
        """Stops sending, waits for the requests in flight, closes the idle connections, so the
        processes can be sampled with nothing of ours open in them. False on timeout."""
        self.running.clear()
        done = self.tunnels.pause(timeout)
        self.pool.close_all()
        return done

    def resume(self) -> None:
        self.tunnels.resume()
        self.running.set()

    def stop(self) -> None:
        self.stopped.set()
        self.running.set()
        self.pool.close_all()

    def schedule(self) -> None:
        rng = random.Random(2)
        sent = 0
        start = time.monotonic()
        while not self.stopped.is_set():
            if not self.running.is_set():
                self.running.wait()
                sent, start = 0, time.monotonic()  # no burst to catch up after a pause
                continue
            due = start + sent / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.5))
                continue
            sent += 1
            kind = rng.choices(self.kinds, self.weights)[0]
            fresh = rng.random() < NEW_CONNECTION_SHARE
            try:
                self.jobs.put_nowait((kind, sent % 2 == 0, fresh))
            except queue.Full:
                self.tally.skipped()

    def work(self, seed: int) -> None:
        rng = random.Random(100 + seed)
        while not self.stopped.is_set():
            try:
                job = self.jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            name = self.tunnels.begin(rng)
            if name is None:  # paused: the job is dropped
                continue
            try:
                self.one(name, *job)
            finally:
                self.tunnels.end(name)

    def one(self, name: str, kind: tuple, by_host: bool, fresh: bool) -> None:
        label, method, path, up, down = kind
        host, target = self.ingress.address(name, path, by_host)
        headers = {"Host": host}
        if fresh:
            headers["Connection"] = "close"
            conn = self.ingress.connect(REQUEST_TIMEOUT_SECS)
        else:
            conn = self.pool.get()
        body = self.upload[:up] if up else None
        begun = time.monotonic()
        try:
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            self.tally.error(f"{label} {type(e).__name__}", f"{name} {method} {target}: {e}")
            return
        latency_ms = (time.monotonic() - begun) * 1000
        if fresh or response.will_close:
            conn.close()
        else:
            self.pool.put(conn)
        if response.status != 200:
            code = response.getheader("x-tunnel-error") or "-"
            self.tally.error(f"{label} {response.status} {code}", f"{name} {method} {target}: {data[:200]!r}")
            return
        if down is None:
            good = data == f"received {up}\n".encode()
        elif down == SMALL_BYTES:
            good = len(data) == SMALL_BYTES
        else:
            good = data == self.expected[down]
        if not good:
            self.tally.error(f"{label} wrong body", f"{name} {method} {target}: {len(data)} bytes")
            return
        self.tally.success(label, up=up, down=len(data), latency_ms=latency_ms if label == "small GET" else None)


class Sessions:
    """`count` long-lived sessions of one sort (SSE or WebSocket), each lasting `session_secs`
    (jittered) on one of `names`, then closed by us and opened anew. A session that ends any
    other way is counted broken."""

    def __init__(self, sort: str, count: int, ingress: Ingress, names: list[str], tally: Tally, session_secs: float, sse_interval_ms: int):
        self.sort = sort
        self.ingress = ingress
        self.names = names
        self.tally = tally
        self.session_secs = session_secs
        self.sse_interval_ms = sse_interval_ms
        self.stopped = threading.Event()
        run = self.sse if sort == "sse" else self.websocket
        self.threads = [threading.Thread(target=self.loop, args=(i, run), name=f"{sort}-{i}", daemon=True) for i in range(count)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stopped.set()

    def loop(self, seed: int, run) -> None:
        rng = random.Random(1000 + seed)
        while not self.stopped.is_set():
            name = self.names[seed % len(self.names)]
            by_host = rng.random() < 0.5
            until = time.monotonic() + self.session_secs * rng.uniform(0.75, 1.25)
            try:
                messages = run(rng, name, by_host, until)
            except SessionBroken as e:
                self.tally.error(f"{self.sort} broken: {e.reason}", f"{name}: {e.detail}")
                self.stopped.wait(1.0)
            except (OSError, http.client.HTTPException) as e:
                self.tally.error(f"{self.sort} broken: {type(e).__name__}", f"{name}: {e}")
                self.stopped.wait(1.0)
            else:
                self.tally.session(self.sort, messages)

    def sse(self, rng: random.Random, name: str, by_host: bool, until: float) -> int:
        """One event stream, read until `until`; each event's id must follow the previous one."""
        host, target = self.ingress.address(name, f"/sse/{self.sse_interval_ms}", by_host)
        conn = self.ingress.connect(self.sse_interval_ms / 1000 + STALL_SECS)
        try:
            conn.request("GET", target, headers={"Host": host, "Accept": "text/event-stream"})
            response = conn.getresponse()
            if response.status != 200:
                raise SessionBroken(f"{response.status} {response.getheader('x-tunnel-error') or '-'}", target)
            expected = 0
            while time.monotonic() < until and not self.stopped.is_set():
                try:
                    line = response.readline()
                except TimeoutError:
                    raise SessionBroken("stalled", f"no event {expected} within {STALL_SECS:.0f}s") from None
                if not line:
                    raise SessionBroken("ended", f"after {expected} events")
                if line.startswith(b"id: "):
                    got = int(line[4:])
                    if got != expected:
                        raise SessionBroken("out of order", f"event {got} where {expected} was due")
                    expected += 1
            return expected
        finally:
            conn.close()

    def websocket(self, rng: random.Random, name: str, by_host: bool, until: float) -> int:
        """One echo session: messages of random sizes every WS_MESSAGE_INTERVAL_SECS, each echoed
        unchanged, then a clean close."""
        host, target = self.ingress.address(name, "/ws", by_host)
        with socket.create_connection(("127.0.0.1", self.ingress.port), timeout=STALL_SECS) as sock:
            ws = WebSocket(sock)
            ws.handshake(host, target)
            sent = 0
            while time.monotonic() < until and not self.stopped.is_set():
                payload = rng.randbytes(rng.randint(1, WS_MAX_MESSAGE_BYTES))
                ws.send(0x2, payload)
                opcode, echoed = ws.receive()
                if opcode != 0x2 or echoed != payload:
                    raise SessionBroken("wrong echo", f"message {sent}: opcode {opcode}, {len(echoed)} of {len(payload)} bytes")
                sent += 1
                self.stopped.wait(WS_MESSAGE_INTERVAL_SECS)
            ws.close()
            return sent


class SessionBroken(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class WebSocket:
    """The client side of RFC 6455, as much as an echo test needs: masked frames out, whole
    messages in (continuations joined, pings answered)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = sock.makefile("rb")

    def handshake(self, host: str, target: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        status = self.reader.readline()
        headers = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        parts = status.split()
        if len(parts) < 2 or parts[1] != b"101":
            code = parts[1].decode() if len(parts) > 1 else "no answer"
            raise SessionBroken(f"{code} {headers.get('x-tunnel-error', '-')}", f"upgrade of {target} refused")
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise SessionBroken("bad handshake", f"sec-websocket-accept {headers.get('sec-websocket-accept')!r}")

    def send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        self.sock.sendall(head + mask + masked)

    def frame(self) -> tuple[bool, int, bytes]:
        head = self.exactly(2)
        fin, opcode, n = head[0] & 0x80, head[0] & 0x0F, head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.exactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.exactly(8))[0]
        if head[1] & 0x80:
            raise SessionBroken("bad frame", "a masked frame from the server")
        return bool(fin), opcode, self.exactly(n)

    def receive(self) -> tuple[int, bytes]:
        """The next whole data message (opcode, payload); answers pings on the way."""
        parts, first = [], None
        while True:
            try:
                fin, opcode, payload = self.frame()
            except TimeoutError:
                raise SessionBroken("stalled", f"no echo within {STALL_SECS:.0f}s") from None
            if opcode == 0x9:
                self.send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                raise SessionBroken("closed by the server", repr(payload[:2]))
            first = first if first is not None else opcode
            parts.append(payload)
            if fin:
                return first, b"".join(parts)

    def close(self) -> None:
        """Sends a close (1000) and waits for the server's."""
        self.send(0x8, struct.pack("!H", 1000))
        while True:
            try:
                _, opcode, _ = self.frame()
            except TimeoutError:
                raise SessionBroken("stalled", "no close frame back") from None
            if opcode == 0x8:
                return

    def exactly(self, n: int) -> bytes:
        data = self.reader.read(n)
        if len(data) < n:
            raise SessionBroken("ended", f"the connection closed ({len(data)} of {n} bytes)")
        return data

