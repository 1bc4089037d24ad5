"""What the bench scripts (compare.py, instructions.py) share: the processes a script starts,
and only those, stopped by PID at the end; waiting for a port; an nginx config of their own."""

import os
import signal
import socket
import subprocess
import time

started = []  # Popen objects this script owns


def start(args, stderr=subprocess.DEVNULL, **kw):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, **kw)
    started.append(p)
    return p


def stop_all():
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in started:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_port(port, within=10.0):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port}")


def nginx_conf(d, body, workers=1):
    """An nginx config in directory `d` (created), `workers` worker processes, everything it
    writes kept in `d`, upstream-friendly keep-alive, with `body` inside its http block. Returns
    the path."""
    os.makedirs(d, exist_ok=True)
    temps = "".join(
        f"  {t}_temp_path {d}/{t};\n" for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    )
    conf = f"""worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
{temps}  keepalive_requests 1000000;
  keepalive_timeout 60s;
{body}
}}
"""
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path
