"""The dev server under load and abuse, on loopback (issue 14, section 3).

    .venv/bin/python scripts/server_load.py                   # 60 s, 50 clients, 10 slow ones
    .venv/bin/python scripts/server_load.py --seconds 10 --clients 20 --json

Starts `mote serve` (the real configuration: web.app.serve) in a child process on a free port over
a folder of two model files, then for --seconds runs --clients threads that each loop over a mix of
GET /models, whole-file GET and HEAD, single and multi-part Range, If-None-Match and If-Range
(matching and stale ETag) and static files, checking every status and every body byte against the
file. Beside them, --slow sockets send their request heads a byte a second (slowloris) and --idle
sockets send nothing. Reported: requests, statuses, wrong bodies, 5xx, connection errors, p50/p99
latency per kind, the server's peak RSS (VmHWM), and how the slow and idle sockets ended. Exit 1 on
any 5xx, wrong body or client-side error.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: Path, port: int) -> subprocess.Popen:
    code = ("import sys; from web.app import serve; "
            f"serve(host='127.0.0.1', port={port}, models_dir={str(models)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.stderr.read()[-2000:]}")


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {}
        self.status: dict[str, int] = {}
        self.wrong: list[str] = []
        self.errors: list[str] = []

    def add(self, kind: str, status: int, seconds: float, ok: bool, why: str = "") -> None:
        with self.lock:
            self.latency.setdefault(kind, []).append(seconds)
            self.status[str(status)] = self.status.get(str(status), 0) + 1
            if not ok:
                self.wrong.append(f"{kind}: {why}"[:200])


def client(port: int, files: dict[str, bytes], etags: dict[str, str], until: float, stats: Stats, seed: int):
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    names = list(files)
    while time.time() < until:
        name = rng.choice(names)
        data, url = files[name], f"/models/{name}"
        kind = rng.choice(["list", "get", "head", "range", "multirange", "inm", "ifrange", "ifrange-stale", "static"])
        headers = {}
        want_status, want_body = 200, data
        if kind == "list":
            url, want_body = "/models", None
        elif kind == "static":
            url, want_body = "/static/style.css", (ROOT / "static" / "style.css").read_bytes()
        elif kind == "head":
            want_body = b""
        elif kind in ("range", "ifrange"):
            a = rng.randrange(len(data))
            b = min(len(data) - 1, a + rng.randrange(1, 1 << 16))
            headers["Range"] = f"bytes={a}-{b}"
            if kind == "ifrange":
                headers["If-Range"] = etags[name]
            want_status, want_body = 206, data[a:b + 1]
        elif kind == "ifrange-stale":
            headers.update({"Range": "bytes=0-9", "If-Range": '"stale"'})
        elif kind == "multirange":
            headers["Range"] = "bytes=0-9,20-29"        # served whole (documented)
        elif kind == "inm":
            headers["If-None-Match"] = etags[name]
            want_status, want_body = 304, b""
        t0 = time.perf_counter()
        try:
            conn.request("HEAD" if kind == "head" else "GET", url, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            with stats.lock:
                stats.errors.append(f"{kind}: {type(e).__name__}: {e}"[:200])
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        dt = time.perf_counter() - t0
        ok, why = resp.status == want_status, f"status {resp.status}, expected {want_status}"
        if ok and want_body is not None and body != want_body:
            ok, why = False, f"body of {len(body)} bytes differs from the file's"
        if ok and kind == "list":
            ok = {m["file"] for m in json.loads(body)} == set(files)
            why = "model list"
        stats.add(kind, resp.status, dt, ok, why)
    conn.close()


def slow_socket(port: int, until: float, mode: str, outcome: list, lock: threading.Lock) -> None:
    """slowloris: a request head a byte a second; idle: nothing. Records how the socket ended."""
    head = b"GET /models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0, ended = time.time(), "open at the end"
    try:
        i = 0
        while time.time() < until:
            if mode == "slow" and i < len(head):
                s.sendall(head[i:i + 1])
                i += 1
            s.settimeout(1.0)
            try:
                if s.recv(1) == b"":
                    ended = f"closed by the server after {time.time() - t0:.1f} s"
                    break
            except socket.timeout:
                continue
    except OSError as e:
        ended = f"{type(e).__name__} after {time.time() - t0:.1f} s"
    finally:
        s.close()
    with lock:
        outcome.append(ended)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--slow", type=int, default=10, help="slowloris sockets")
    ap.add_argument("--idle", type=int, default=10, help="sockets that never send a byte")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from tests.tiny_models import write_tiny

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        files = {}
        for name, d in (("small.gguf", 64), ("larger.gguf", 256)):
            files[name] = write_tiny(models / name, "llama", d=d, d_ff=2 * d).read_bytes()
        etags = {n: f'"{hashlib.sha256(b).hexdigest()}"' for n, b in files.items()}
        port = free_port()
        server = start_server(models, port)
        try:
            stats, outcomes, lock = Stats(), [], threading.Lock()
            until = time.time() + args.seconds
            threads = [threading.Thread(target=client, args=(port, files, etags, until, stats, i))
                       for i in range(args.clients)]
            threads += [threading.Thread(target=slow_socket, args=(port, until, "slow", outcomes, lock))
                        for _ in range(args.slow)]
            threads += [threading.Thread(target=slow_socket, args=(port, until, "idle", outcomes, lock))
                        for _ in range(args.idle)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rss = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(10)

    lat = {k: {"n": len(v), "p50_ms": round(1000 * statistics.median(v), 1),
               "p99_ms": round(1000 * sorted(v)[max(0, int(len(v) * 0.99) - 1)], 1)} for k, v in sorted(stats.latency.items())}
    n5xx = sum(n for s, n in stats.status.items() if s.startswith("5"))
    report = {"seconds": args.seconds, "clients": args.clients, "requests": sum(len(v) for v in stats.latency.values()),
              "status": stats.status, "5xx": n5xx, "wrong": len(stats.wrong), "client_errors": len(stats.errors),
              "server_peak_rss_mb": rss and round(rss, 1), "latency": lat,
              "slow_and_idle_sockets": sorted(set(o.split(" after ")[0] for o in outcomes)),
              "first_problems": (stats.wrong + stats.errors)[:10]}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{report['requests']} requests in {args.seconds:g} s from {args.clients} clients: statuses "
              f"{report['status']}, 5xx {n5xx}, wrong bodies {len(stats.wrong)}, client errors {len(stats.errors)}; "
              f"server peak RSS {report['server_peak_rss_mb']} MB")
        for k, v in lat.items():
            print(f"  {k:14} n={v['n']:6d}  p50 {v['p50_ms']:7.1f} ms  p99 {v['p99_ms']:7.1f} ms")
        print(f"  slow/idle sockets: {', '.join(sorted(outcomes)[:3])} ... ({len(outcomes)})")
        for p in report["first_problems"]:
            print("  problem:", p)
    return 1 if n5xx or stats.wrong or stats.errors else 0


if __name__ == "__main__":
    sys.exit(main())
