//! `ring = "nginx"` against a live nginx: the same backends behind nginx's
//! `hash $request_uri consistent` and behind shardgate with `key = ["uri"]`, 10,000 random URIs
//! through both, and every one must reach the same backend. Then one backend `down` in nginx and
//! drained in shardgate: again every URI must agree. Skips without nginx (fails under CI=true).

mod common;

use common::*;
use http::Request;

const URIS: usize = 10_000;

/// nginx in the foreground, one process, everything under `dir`.
fn start_nginx(dir: &std::path::Path, upstream: &str, port: u16) -> Running {
    let temps: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {}/{t};\n", dir.display()))
        .collect();
    let conf = format!(
        "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\nhttp {{\n\
         access_log off;\n{temps}  upstream fleet {{\n    hash $request_uri consistent;\n{upstream}  }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://fleet; }}\n  }}\n}}\n",
        d = dir.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    Running::spawn(
        std::process::Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
}

/// Random request URIs (path and query), different every run; the seed is in failure messages.
fn uris(seed: u64) -> Vec<String> {
    let mut x = seed;
    let mut next = move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..URIS)
        .map(|i| match i % 3 {
            0 => format!("/objects/{:x}", next()),
            1 => format!("/u/{}/avatar.png?size={}", next() % 100_000, next() % 512),
            _ => format!("/{:x}/{:x}?v={}&lang=en", next() % 9973, next(), next() % 7),
        })
        .collect()
}

/// Agreeing URIs out of [`URIS`], with `weights` and optionally backend `down` out of service.
async fn agreement(weights: &[i64], down: Option<usize>) -> usize {
    let backends: Vec<TestBackend> = start_backends(weights.len()).await;
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let mut p = pool("fleet", &refs).ring("nginx").key(&["uri"]);
    for (b, w) in backends.iter().zip(weights) {
        p = p.weight(&b.id, *w);
    }
    let proxy = TestProxy::start(&p.toml()).await;

    let upstream: String = backends
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(i, (b, w))| {
            let mark = if down == Some(i) { " down" } else { "" };
            format!("    server {} weight={w}{mark};\n", b.addr)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _nginx = start_nginx(dir.path(), &upstream, port);
    let nginx = format!("http://127.0.0.1:{port}");
    wait_answering(&format!("{nginx}/"), WAIT).await;
    if let Some(i) = down {
        let url = proxy.admin_url(&format!("/api/backends/fleet/{}/drain", backends[i].id));
        let a = send(&client(), Request::post(url).body(empty()).unwrap()).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let uris = uris(seed);
    let by_nginx = route_all_at(&nginx, &uris).await;
    let by_us = route_all(&proxy, &uris).await;
    let differ: Vec<String> = uris
        .iter()
        .zip(by_nginx.iter().zip(&by_us))
        .filter(|(_, (n, s))| n != s)
        .take(5)
        .map(|(u, (n, s))| format!("{u}: nginx {n}, shardgate {s}"))
        .collect();
    let agree = by_nginx.iter().zip(&by_us).filter(|(n, s)| n == s).count();
    eprintln!(
        "weights {weights:?}, down {down:?}: {agree} of {URIS} URIs on the same backend (seed {seed})"
    );
    assert!(
        differ.is_empty(),
        "{} of {URIS} URIs differ (seed {seed}, servers:\n{upstream}), first ones:\n{}",
        URIS - agree,
        differ.join("\n")
    );
    if let Some(i) = down {
        assert!(
            by_us.iter().all(|b| *b != backends[i].id),
            "a drained backend got traffic"
        );
    }
    agree
}

/// Backends on three kinds of host text (127.0.0.1, 127.0.0.2 and [::1] where IPv6 works), so
/// both proxies split `host:port` and bracketed IPv6 the same way.
async fn start_backends(n: usize) -> Vec<TestBackend> {
    let v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let host = match i % 3 {
            0 => "127.0.0.1:0",
            1 => "127.0.0.2:0",
            _ if v6 => "[::1]:0",
            _ => "127.0.0.3:0",
        };
        v.push(TestBackend::start_on(&format!("b{i}"), host.parse().unwrap()).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_backends_route_every_uri_as_nginx_does() {
    if tool(&["nginx"], "nginx").is_none() {
        return;
    }
    assert_eq!(agreement(&[1, 2, 1, 3], None).await, URIS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_backends_route_every_uri_as_nginx_does_also_with_one_down() {
    if tool(&["nginx"], "nginx").is_none() {
        return;
    }
    let weights = [1, 1, 2, 5, 1, 3, 1];
    assert_eq!(agreement(&weights, None).await, URIS);
    // The weight-5 backend: the most keys to send elsewhere.
    assert_eq!(agreement(&weights, Some(3)).await, URIS);
}
