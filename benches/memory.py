#!/usr/bin/env python3
"""Memory of the release binary: idle RSS, RSS per idle keep-alive client connection, and RSS
growth while a 1 GiB body streams through in each direction.

    cargo build --release && python3 benches/memory.py [CONNECTIONS]   # default 10000

Backends are small Python servers on 127.0.0.1; every process started here is stopped by PID.
"""

import http.server
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

CONNS = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SHARDGATE") or os.path.join(ROOT, "target", "release", "shardgate")
GIB = 1 << 30
MID = 256 << 10  # a body larger than the proxy's copy buffers
CHUNK = b"\0" * (1 << 16)


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        n = {"/big": GIB, "/mid": MID}.get(self.path, 3)
        self.send_response(200)
        self.send_header("content-length", str(n))
        self.end_headers()
        if n == 3:
            self.wfile.write(b"ok\n")
            return
        while n:
            k = min(n, len(CHUNK))
            self.wfile.write(CHUNK[:k])
            n -= k

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        while n:
            b = self.rfile.read(min(n, 1 << 16))
            if not b:
                break
            n -= len(b)
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing on {port}")


def request(sock, raw):
    """Send `raw` and read the whole answer, by its Content-Length."""
    sock.sendall(raw)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    got = len(body)
    while got < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += len(chunk)


def stream_peak(pid, port, method):
    """Peak RSS while 1 GiB goes through in one direction."""
    peak = [rss_kib(pid)]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    s = socket.create_connection(("127.0.0.1", port))
    if method == "GET":
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        got, head = 0, b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        got = len(head.split(b"\r\n\r\n", 1)[1])
        while got < GIB:
            b = s.recv(1 << 20)
            if not b:
                break
            got += len(b)
    else:
        s.sendall(f"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\n\r\n".encode())
        left = GIB
        block = b"\0" * (1 << 20)
        while left:
            k = min(left, len(block))
            s.sendall(block[:k])
            left -= k
        resp = b""
        while b"ok\n" not in resp:
            resp += s.recv(4096)
    s.close()
    done.set()
    t.join()
    return peak[0]


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = CONNS + 1000  # each process: the client sockets here, the accepted ones there
    if hard != resource.RLIM_INFINITY and hard < want:
        raise SystemExit(f"need {want} file descriptors, the hard limit is {hard}: use fewer CONNECTIONS")
    # Raised here, inherited by the proxy started below.
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    bport = free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", bport), Backend)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    port = free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(
        f'[admin]\nlisten = "127.0.0.1:0"\n[server]\nworker_threads = 1\n[[pools]]\nname = "m"\n'
        f'listen = "127.0.0.1:{port}"\nmax_connections = {CONNS + 100}\n'
        f'[[pools.backends]]\nid = "b"\naddress = "127.0.0.1:{bport}"\n'
    )
    cfg.close()
    proc = subprocess.Popen([BIN, "run", "-c", cfg.name], stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        time.sleep(0.5)
        idle = rss_kib(proc.pid)
        # One request first so the upstream pool and lazily built state exist.
        s = socket.create_connection(("127.0.0.1", port))
        request(s, b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
        s.close()
        time.sleep(0.2)
        base = rss_kib(proc.pid)
        socks = []
        for i in range(CONNS):
            s = socket.create_connection(("127.0.0.1", port))
            request(s, f"GET /c/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            socks.append(s)
        time.sleep(0.5)
        held = rss_kib(proc.pid)
        per_conn = (held - base) * 1024 / CONNS
        for s in socks:
            s.close()
        time.sleep(0.5)
        after_close = rss_kib(proc.pid)
        # Connections that carried a larger body, then went idle.
        big_n = min(CONNS, 2000)
        socks = []
        for i in range(big_n):
            s = socket.create_connection(("127.0.0.1", port))
            request(s, b"GET /mid HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        time.sleep(0.5)
        after_mid = rss_kib(proc.pid)
        mid_per_conn = (after_mid - after_close) * 1024 / big_n
        for s in socks:
            s.close()
        time.sleep(0.5)
        before_stream = rss_kib(proc.pid)
        down = stream_peak(proc.pid, port, "GET")
        up = stream_peak(proc.pid, port, "POST")
        print(f"idle RSS at startup            {idle / 1024:8.1f} MiB")
        print(f"RSS with {CONNS} idle keep-alive connections  {held / 1024:8.1f} MiB  "
              f"({per_conn / 1024:.1f} KiB per connection)")
        print(f"RSS after they closed          {after_close / 1024:8.1f} MiB")
        print(f"{big_n} idle connections after a {MID >> 10} KiB download each: "
              f"{mid_per_conn / 1024:.1f} KiB per connection")
        print(f"1 GiB download: peak RSS growth {(down - before_stream) / 1024:8.1f} MiB")
        print(f"1 GiB upload:   peak RSS growth {(up - before_stream) / 1024:8.1f} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        srv.shutdown()
        os.unlink(cfg.name)


main()
