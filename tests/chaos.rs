//! Chaos, bounded: the running binary under steady load while a backend is killed and brought
//! back and the config is reloaded every 100 ms; then SIGTERM with a response mid-stream. What
//! the users see: with `retry_idempotent` no GET fails, and the stream in flight at SIGTERM
//! completes before the process exits 0.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
const CLIENTS: usize = 8;
/// Reloads during the chaos phase, one every 100 ms.
const RELOADS: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_restarts_and_reloads_under_load_fail_no_get_and_sigterm_lets_a_stream_finish() {
    let mut bs = backends(4).await;
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chaos.toml");
    // Checks quick enough to see b1 go and come back within the second it is gone, with room
    // for a loaded machine (a false "down" would only move keys, never fail a GET).
    let checks = health(Check::Http)
        .interval(Duration::from_millis(200))
        .timeout(Duration::from_millis(150))
        .fall(2)
        .rise(1)
        .passive_failures(1);
    // Two configs to flip between: b3 at weight 1 or 2, so every reload moves keys. b1 comes
    // back on the same address, so the backend list never changes.
    let base = pool("cache", &refs(&bs))
        .listen(format!("127.0.0.1:{port}"))
        .retries(2)
        .retry_idempotent(true)
        .health(checks);
    let config = |b3_weight: i64| {
        ConfigToml::new()
            .admin_listen(format!("127.0.0.1:{admin}"))
            .shutdown_grace(Duration::from_secs(10))
            .pool(base.clone().weight("b3", b3_weight))
            .toml()
    };
    std::fs::write(&path, config(1)).unwrap();
    let mut child = Running::spawn(
        std::process::Command::new(BIN)
            .args(["run", "-c"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let url = format!("http://127.0.0.1:{port}");
    wait_answering(&format!("{url}/up"), WAIT).await;

    // Steady load: 8 clients, GETs with keys spread over every backend.
    let load = Load::start(&url, "chaos", CLIENTS);

    // Chaos: a reload every 100 ms; b1 killed a third of the way in, back at two thirds.
    let b1_addr = bs[1].addr;
    for round in 0..RELOADS {
        if round == RELOADS / 3 {
            bs[1].kill();
        }
        if round == 2 * RELOADS / 3 {
            bs[1] = TestBackend::start_on("b1", b1_addr).await;
        }
        std::fs::write(&path, config(1 + (round % 2) as i64)).unwrap();
        signal(&child, "HUP");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, failed) = load.finish().await;
    eprintln!("chaos: {ok} GETs ok, {failed} failed, {RELOADS} reloads, b1 killed and restarted");
    assert!(ok > 500, "too little load to say anything: {ok}");
    assert_eq!(failed, 0, "a GET failed under chaos");
    // The chaos was real: b1's checks failed while it was gone, and reloads were applied.
    let s = get(&format!("http://127.0.0.1:{admin}/metrics")).await.body;
    let b1_failed = [("pool", "cache"), ("backend", "b1"), ("result", "fail")];
    assert!(value(&s, "shardgate_health_checks_total", &b1_failed) >= 2.0);
    let applied = [("result", "success")];
    assert!(value(&s, "shardgate_config_reloads_total", &applied) >= (RELOADS / 2) as f64);

    // SIGTERM with a response mid-stream: the stream completes, then the process exits 0.
    let resp = client()
        .request(Request::get(format!("{url}/gated")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first;");
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Whichever backend owns /gated sends the rest now.
    for b in &bs {
        b.open_gate();
    }
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the stream finishes")
        .expect("without an error")
        .to_bytes();
    assert_eq!(
        &rest[..],
        b"second",
        "the stream in flight at SIGTERM completed"
    );
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, WAIT))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
