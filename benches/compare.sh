#!/usr/bin/env bash
# Side-by-side: shardgate vs nginx vs HAProxy vs Pingora as a consistent-hashing proxy in front
# of the same 4 nginx backends, on this machine, in one run.
#
#   benches/compare.sh [ROUNDS] [SECONDS]      # defaults: 3 rounds of 10 s per proxy
#   CONNECTIONS=5000 benches/compare.sh 1 10   # overload: 5,000 concurrent connections
#   BASELINE=old/shardgate benches/compare.sh  # A/B: an older build runs as a fourth proxy
#   ACCESS_LOG=1 benches/compare.sh            # shardgate and nginx write access logs
#   PINGORA=0 benches/compare.sh               # without the Pingora peer (no build of it)
#   TLS=1 benches/compare.sh                   # HTTPS: every proxy terminates TLS (no Pingora)
#   TLS=1 CLOSE=1 benches/compare.sh           # ... with a full TLS handshake per request
#
# Each proxy gets one core (taskset -c 0) and one worker/thread; wrk and the backends share the
# other core. wrk: 1 thread, 50 keep-alive connections, a random path per request. Reported per
# proxy: req/s, p99 latency, and CPU time per request from the proxy's own accounting
# (/proc/PID/stat utime+stime over the measured run), medians over the rounds, and the ratios.
# Traffic stays on 127.0.0.1; every process started here is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in nginx haproxy wrk openssl; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
# Pingora's zlib-ng dependency builds with cmake.
if [[ "${PINGORA:-1}" != 0 && "${TLS:-0}" != 1 ]]; then
    command -v cmake >/dev/null 2>&1 || need+=(cmake)
fi
if ((${#need[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${need[*]} (Debian packages)" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "need ${need[*]}: apt-get install -y ${need[*]}" >&2
        exit 1
    fi
fi
command -v taskset >/dev/null 2>&1 || { echo "need taskset (util-linux)" >&2; exit 1; }

cargo build --release --quiet --bin shardgate
if [[ "${PINGORA:-1}" != 0 && "${TLS:-0}" != 1 ]]; then
    # Its own target dir: Pingora's dependency tree never mixes with shardgate's.
    echo "building the Pingora peer (benches/pingora; the first build takes a few minutes)" >&2
    CARGO_TARGET_DIR=target/pingora cargo build --release --quiet --manifest-path benches/pingora/Cargo.toml
fi
exec python3 benches/compare.py "$@"
