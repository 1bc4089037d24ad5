#!/usr/bin/env python3
"""Side-by-side proxy comparison; run through benches/compare.sh (which installs and builds).

Backends: one nginx (1 worker) serving 4 ports with a small fixed body. Proxies under test, each
pinned to CPU 0 with one worker/thread, all hashing the request URI consistently over the same 4
backends with keep-alive upstream connections:
  shardgate  key = ["path"], worker_threads = 1
  nginx      hash $request_uri consistent; keepalive 64
  haproxy    balance uri; hash-type consistent; http-reuse always; nbthread 1
  pingora    benches/pingora: Pingora's proxy, KetamaHashing over path and query, threads 1
wrk (1 thread, 50 connections, random paths) and the backends run on CPU 1.

TLS=1 measures HTTPS instead: each proxy terminates TLS with the same ECDSA P-256 certificate
(made here with openssl), wrk connects with https:// (keep-alive: one handshake per connection,
so this is the cost of TLS records, not of handshakes; CLOSE=1 makes it one full handshake per
request), backends stay cleartext. Pingora is left
out (its TLS needs a build with a TLS feature).

THREADS=N (N > 1) measures the multi-core layouts instead: every proxy gets N workers/threads
and nothing is pinned (proxy, wrk and backends share the machine), and shardgate runs twice,
`worker_layout = "per-thread"` (shardgate) and `"work-stealing"` (shardgate-ws).
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import nginx_conf as nginx_conf_in
from benchlib import start, stop_all, wait_port

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
CONNECTIONS = int(os.environ.get("CONNECTIONS", "50"))  # CONNECTIONS=5000 for the overload run
THREADS = int(os.environ.get("THREADS", "1"))
BACKEND_PORTS = [19101, 19102, 19103, 19104]
PROXY_PORTS = {"shardgate": 18201, "nginx": 18202, "haproxy": 18203, "baseline": 18204, "pingora": 18205,
               "shardgate-ws": 18206}
# BASELINE=/path/to/an/older/shardgate adds it as a fourth proxy: A/B a change in the same run.
BASELINE = os.environ.get("BASELINE")
# ACCESS_LOG=1: shardgate and nginx write an access log line per request to a file (nginx
# buffered, as production configs do); HAProxy logs only to syslog, so it stays without one.
ACCESS_LOG = os.environ.get("ACCESS_LOG") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDGATE = os.path.join(ROOT, "target", "release", "shardgate")
PINGORA = os.path.join(ROOT, "target", "pingora", "release", "pingora-peer")
TLS = os.environ.get("TLS") == "1"
# CLOSE=1: every request on a new connection (`Connection: close`): with TLS=1, a full
# handshake per request.
CLOSE = os.environ.get("CLOSE") == "1"
WITH_PINGORA = os.environ.get("PINGORA", "1") != "0" and not TLS
SCHEME = "https" if TLS else "http"
TICK = os.sysconf("SC_CLK_TCK")
PROXY_CPU, LOAD_CPU = ("0", "1") if THREADS == 1 else (f"0-{os.cpu_count() - 1}",) * 2

work = tempfile.mkdtemp(prefix="shardgate-compare-")


CERT, KEY, PEM = (os.path.join(work, n) for n in ("proxy.crt", "proxy.key", "proxy.pem"))
if TLS:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", KEY, "-out", CERT, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    with open(PEM, "w") as f:  # HAProxy wants the chain and the key in one file
        f.write(open(CERT).read() + open(KEY).read())


def nginx_conf(name, body, workers=1):
    d = os.path.join(work, name)
    return d, nginx_conf_in(d, body, workers)


def start_backends():
    servers = "".join(
        f'  server {{ listen 127.0.0.1:{p}; location / {{ return 200 "backend {i}\\n"; }} }}\n'
        for i, p in enumerate(BACKEND_PORTS)
    )
    d, path = nginx_conf("backends", servers)
    start(["taskset", "-c", LOAD_CPU, "nginx", "-p", d, "-c", path, "-e", f"{d}/error.log", "-g", "daemon off;"])
    for p in BACKEND_PORTS:
        wait_port(p)


def start_shardgate(name="shardgate", binary=SHARDGATE, layout=None):
    backends = "".join(
        f'\n[[pools.backends]]\nid = "b{i}"\naddress = "127.0.0.1:{p}"\n' for i, p in enumerate(BACKEND_PORTS)
    )
    cfg = os.path.join(work, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[admin]\nlisten = "127.0.0.1:0"\n[server]\nworker_threads = {THREADS}\n'
            + (f'worker_layout = "{layout}"\n' if layout else "")
            +            f"access_log = {'true' if ACCESS_LOG else 'false'}\n"
            f'[[pools]]\nname = "bench"\nlisten = "127.0.0.1:{PROXY_PORTS[name]}"\nkey = ["path"]\n'
            f"upstream_max_idle = 256\n"
            + (f'[pools.tls]\ncert = "{CERT}"\nkey = "{KEY}"\n' if TLS else "")
            + backends
        )
    # Logs (the access log among them) go to stderr, here a file as under a process supervisor.
    log = open(os.path.join(work, f"{name}.log"), "wb")
    p = start(
        ["taskset", "-c", PROXY_CPU, binary, "run", "-c", cfg],
        stderr=log,
        env={**os.environ, "RUST_LOG": "info" if ACCESS_LOG else "warn"},
    )
    wait_port(PROXY_PORTS[name])
    return [p.pid]


def start_nginx_proxy():
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in BACKEND_PORTS)
    log = os.path.join(work, "nginx-access.log")
    access = f"access_log {log} combined buffer=64k flush=1s;" if ACCESS_LOG else ""
    body = f"""  upstream be {{
    hash $request_uri consistent;
{servers}    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{PROXY_PORTS["nginx"]}{" ssl" if TLS else ""};
    {f"ssl_certificate {CERT}; ssl_certificate_key {KEY}; ssl_protocols TLSv1.2 TLSv1.3;" if TLS else ""}
    {access}
    location / {{
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}"""
    d, path = nginx_conf("proxy", body, workers=THREADS)
    p = start(["taskset", "-c", PROXY_CPU, "nginx", "-p", d, "-c", path, "-e", f"{d}/error.log", "-g", "daemon off;"])
    wait_port(PROXY_PORTS["nginx"])
    time.sleep(0.3)
    workers = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    return [p.pid] + [int(w) for w in workers]


def start_haproxy():
    servers = "".join(f"  server s{i} 127.0.0.1:{p}\n" for i, p in enumerate(BACKEND_PORTS))
    cfg = os.path.join(work, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(
            f"""global
  nbthread {THREADS}
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:{PROXY_PORTS["haproxy"]}{f" ssl crt {PEM}" if TLS else ""}
  default_backend b
backend b
  balance uri
  hash-type consistent
{servers}"""
        )
    p = start(["taskset", "-c", PROXY_CPU, "haproxy", "-f", cfg, "-db"])
    wait_port(PROXY_PORTS["haproxy"])
    return [p.pid]


def start_pingora():
    conf = os.path.join(work, "pingora.yaml")
    with open(conf, "w") as f:
        # One worker thread like the others; no grace periods, so SIGTERM ends it at once.
        f.write(
            f"---\nversion: 1\nthreads: {THREADS}\npid_file: {work}/pingora.pid\n"
            f"error_log: {work}/pingora.log\nupgrade_sock: {work}/pingora.sock\n"
            "grace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 0\n"
        )
    backends = ",".join(f"127.0.0.1:{p}" for p in BACKEND_PORTS)
    p = start(
        ["taskset", "-c", PROXY_CPU, PINGORA, "-c", conf],
        env={**os.environ, "PEER_LISTEN": f"127.0.0.1:{PROXY_PORTS['pingora']}", "PEER_BACKENDS": backends},
    )
    wait_port(PROXY_PORTS["pingora"])
    return [p.pid]


def cpu_ticks(pids):
    """(user, system) clock ticks the processes have used so far."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user, system


LUA = os.path.join(work, "random.lua")
with open(LUA, "w") as f:
    f.write(
        'math.randomseed(os.time())\n'
        'request = function() return wrk.format("GET", "/k/" .. math.random(1, 1000000)) end\n'
    )


def to_ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, seconds):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", LUA]
        + (["-H", "Connection: close"] if CLOSE else [])
        + [
         f"{SCHEME}://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, to_ms(*p99.groups()), total, int(errors.group(1)) if errors else 0, sock.group(1) if sock else ""


def measure(name, pids):
    port = PROXY_PORTS[name]
    wrk(port, 2)  # warm-up: connections, caches, CPU frequency
    before = cpu_ticks(pids)
    rps, p99, total, non2xx, sockerr = wrk(port, SECONDS)
    after = cpu_ticks(pids)
    user_s, sys_s = ((a - b) / TICK for a, b in zip(after, before))
    cpu_s = user_s + sys_s
    return {
        "rps": rps,
        "p99_ms": p99,
        "cpu_us_per_req": cpu_s * 1e6 / total,
        "user_us_per_req": user_s * 1e6 / total,
        "cpu_util": cpu_s / SECONDS,
        "errors": non2xx,
        "sockerr": sockerr,
    }


def main():
    if not os.path.exists(SHARDGATE):
        raise SystemExit("build first: cargo build --release (benches/compare.sh does it)")
    start_backends()
    if THREADS > 1:
        proxies = {"shardgate": start_shardgate(layout="per-thread"),
                   "shardgate-ws": start_shardgate("shardgate-ws", layout="work-stealing")}
    else:
        proxies = {"shardgate": start_shardgate()}
    proxies.update({"nginx": start_nginx_proxy(), "haproxy": start_haproxy()})
    if WITH_PINGORA:
        if not os.path.exists(PINGORA):
            raise SystemExit("build the Pingora peer first (benches/compare.sh does it), or PINGORA=0")
        proxies["pingora"] = start_pingora()
    if BASELINE:
        proxies["baseline"] = start_shardgate("baseline", BASELINE)
    names = list(proxies)
    if TLS:
        # Same protocol and cipher everywhere, or the comparison says nothing.
        for n in names:
            out = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{PROXY_PORTS[n]}", "-servername", "localhost"],
                input="", capture_output=True, text=True,
            ).stdout
            found = re.search(r"New, (\S+), Cipher is (\S+)", out)
            print(f"{n:<12} negotiates {' '.join(found.groups()) if found else 'nothing?'}", flush=True)
    results = {n: [] for n in names}
    for r in range(ROUNDS):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for n in order:
            m = measure(n, proxies[n])
            results[n].append(m)
            extra = f"  non-2xx {m['errors']}" if m["errors"] else ""
            extra += f"  socket errors: {m['sockerr']}" if m["sockerr"] else ""
            print(f"round {r + 1} {n:<12} {m['rps']:>9.0f} req/s  p99 {m['p99_ms']:>7.2f} ms  "
                  f"CPU {m['cpu_us_per_req']:>6.2f} µs/req (user {m['user_us_per_req']:.2f}, "
                  f"{m['cpu_util'] * 100:.0f}% of a core){extra}",
                  flush=True)
    med = {n: {k: statistics.median(x[k] for x in results[n]) for k in ("rps", "p99_ms", "cpu_us_per_req", "user_us_per_req")}
           for n in names}
    where = "proxy on 1 core" if THREADS == 1 else f"{THREADS} threads per proxy, nothing pinned"
    where += ", HTTPS" if TLS else ""
    where += ", a new connection per request" if CLOSE else ""
    print(f"\nmedians over {ROUNDS} rounds of {SECONDS} s, {CONNECTIONS} connections, {where}:")
    print(f"{'proxy':<12} {'req/s':>9} {'p99 ms':>8} {'CPU µs/req':>11} {'of it user':>12}")
    for n in names:
        m = med[n]
        print(f"{n:<12} {m['rps']:>9.0f} {m['p99_ms']:>8.2f} {m['cpu_us_per_req']:>11.2f} {m['user_us_per_req']:>12.2f}")
    # Ratios are taken within each round (the targets ran back to back, on the same machine
    # state), then the median over the rounds: a machine that drifts between rounds moves both
    # sides of a ratio together.
    print("ratios: median over rounds of the ratio within each round")
    for other in [n for n in names if n != "shardgate"]:
        def ratio(key):
            return statistics.median(s[key] / o[key] for s, o in zip(results["shardgate"], results[other]))
        print(f"shardgate / {other:<12} CPU per request {ratio('cpu_us_per_req'):.2f}x   "
              f"req/s {ratio('rps'):.2f}x   p99 {ratio('p99_ms'):.2f}x")
    failed = sum(x["errors"] for n in names for x in results[n])
    if failed:
        print(f"warning: {failed} non-2xx responses in total", file=sys.stderr)


try:
    main()
finally:
    stop_all()
    # Configs and logs (with ACCESS_LOG=1, hundreds of MB) are of no use after the run.
    shutil.rmtree(work, ignore_errors=True)
