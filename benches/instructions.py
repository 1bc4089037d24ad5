#!/usr/bin/env python3
"""User-space instructions per request of shardgate, counted by callgrind, for config variants.

    python3 benches/instructions.py                              # the default config
    python3 benches/instructions.py 'hot_keys = false' ''        # A/B: each argument is extra
                                                                 # [[pools]] settings
    REQUESTS=5000 KEYS=zipf python3 benches/instructions.py ...  # request count, key shape
    KEEP=/tmp/profiles python3 benches/instructions.py ...       # keep the callgrind profiles

One nginx backend (not under valgrind) answers a small body; shardgate (release build, one
worker thread) runs under `valgrind --tool=callgrind`; a keep-alive client sends the requests
one at a time. Each variant runs twice, with W and W + REQUESTS requests, and the difference of
the two instruction totals divided by REQUESTS is the per-request count: startup, warm-up and
shutdown cancel out. KEYS=random (default) sends a new path every time (every key is new to the
hot-key view: its worst case); KEYS=zipf sends 1,000 paths with Zipf(1) frequencies.
Needs valgrind and nginx (Debian packages); everything stays on 127.0.0.1.
"""

import http.client
import os
import random
import re
import shutil
import signal
import sys
import tempfile

from benchlib import nginx_conf, start, stop_all, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDGATE = os.environ.get("SHARDGATE") or os.path.join(ROOT, "target", "release", "shardgate")
REQUESTS = int(os.environ.get("REQUESTS", "4000"))
WARMUP = 500
KEYS = os.environ.get("KEYS", "random")
BACKEND_PORT, PROXY_PORT = 19151, 18251

work = tempfile.mkdtemp(prefix="shardgate-instructions-")


def start_backend():
    body = f'  server {{ listen 127.0.0.1:{BACKEND_PORT}; location / {{ return 200 "ok\\n"; }} }}'
    d = os.path.join(work, "nginx")
    start(["nginx", "-p", d, "-c", nginx_conf(d, body), "-e", f"{d}/error.log", "-g", "daemon off;"])
    wait_port(BACKEND_PORT)


def paths(n, seed):
    rng = random.Random(seed)
    if KEYS == "zipf":
        keys = [f"/item/{k}" for k in range(1, 1001)]
        weights = [1 / k for k in range(1, 1001)]
        return rng.choices(keys, weights, k=n)
    return [f"/k/{rng.randrange(1 << 40)}" for _ in range(n)]


def instructions(extra, n):
    """Total instructions of a shardgate run that served `n` requests."""
    cfg = os.path.join(work, "shardgate.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[admin]\nlisten = "127.0.0.1:0"\n[server]\nworker_threads = 1\nwatch_config = false\n'
            f'[[pools]]\nname = "bench"\nlisten = "127.0.0.1:{PROXY_PORT}"\nkey = ["path"]\n{extra}\n'
            f'[pools.health]\nkind = "none"\n'
            f'[[pools.backends]]\nid = "b0"\naddress = "127.0.0.1:{BACKEND_PORT}"\n'
        )
    out = os.path.join(work, "callgrind.out")
    p = start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", SHARDGATE, "run", "-c", cfg],
              env={**os.environ, "RUST_LOG": "warn"})
    wait_port(PROXY_PORT, within=60.0)  # valgrind starts slowly
    conn = http.client.HTTPConnection("127.0.0.1", PROXY_PORT, timeout=30)
    for path in paths(n, n):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise SystemExit(f"{path}: HTTP {resp.status}")
    conn.close()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    with open(out) as f:
        totals = [int(m.group(1)) for m in re.finditer(r"^(?:summary|totals): (\d+)", f.read(), re.M)]
    keep = os.environ.get("KEEP")  # a directory: keep the profiles, for callgrind_annotate
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.move(out, os.path.join(keep, f"callgrind.out.{len(os.listdir(keep))}"))
    else:
        os.remove(out)
    return totals[-1]


def main():
    for tool in ("valgrind", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"need {tool}: apt-get install -y {tool}")
    if not os.path.exists(SHARDGATE):
        raise SystemExit("build first: cargo build --release")
    start_backend()
    variants = sys.argv[1:] or [""]
    print(f"{REQUESTS} requests, keys {KEYS}, one worker thread, callgrind")
    for extra in variants:
        base = instructions(extra, WARMUP)
        more = instructions(extra, WARMUP + REQUESTS)
        per = (more - base) / REQUESTS
        print(f"{extra or '(defaults)':<40} {per:>9.0f} instructions per request", flush=True)


try:
    main()
finally:
    stop_all()
    shutil.rmtree(work, ignore_errors=True)
