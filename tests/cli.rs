//! The binary as an operator uses it: `check`, `route`, `run` with signals, and `demo`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
const WAIT: Duration = Duration::from_secs(20);

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn sigterm(child: &std::process::Child) {
    signal(child, "TERM");
}

#[test]
fn check_accepts_the_reference_config() {
    let out = Command::new(BIN)
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/shardgate.toml"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(stdout.contains("pool cache"), "{stdout}");
}

#[test]
fn check_and_route_say_that_a_pool_discovers_its_backends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k8s.toml");
    std::fs::write(
        &path,
        "[[pools]]\nname = \"cache\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[pools.discover]]\ndns = \"_http._tcp.cache\"\n",
    )
    .unwrap();
    let out = run_shardgate(&[&"check", &"-c", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("0 backends listed (more from DNS)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("discover: srv _http._tcp.cache every 5s, weight 1"),
        "{stdout}"
    );

    // Nothing listed: no owner, and a note on where the answer is.
    let out = run_shardgate(&[&"route", &"-c", &path, &"/users/42"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("/users/42\t-\thash="), "{stdout}");
    assert!(
        stderr.contains("also has backends from DNS (srv _http._tcp.cache)"),
        "{stderr}"
    );
    assert!(stderr.contains("GET /api/route"), "{stderr}");

    let out = run_shardgate(&[&"diff", &path, &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "note: pools with backends from DNS (cache): this compares the listed backends only"
        ),
        "{stderr}"
    );
}

#[test]
fn check_lists_every_problem_with_file_line_column_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "bad.toml",
        r#"[[pools]]
name = "cache"
listen = "127.0.0.1:8080"
connect_timeout = "fast"

[[pools.backends]]
address = "127.0.0.1:9001"
weight = 0

[[pools.backends]]
address = "127.0.0.1:9001"
"#,
    );
    let out = run_shardgate(&[&"check", &"-c", &path]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(err.contains("(3 problems)"), "{err}");
    assert!(
        err.contains(&format!(
            "{file}:4:19: pools[0].connect_timeout: `fast` is not a duration"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}:8:10: pools[0].backends[0].weight: 0 is out of range"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("{file}:11:11: pools[0].backends[1].address: address 127.0.0.1:9001 is already used by pools[0].backends[0]")), "{err}");
    // Problems come in file order.
    let at = |s: &str| err.find(s).unwrap();
    assert!(
        at(":4:19:") < at(":8:10:") && at(":8:10:") < at(":11:11:"),
        "{err}"
    );
}

#[test]
fn check_reports_syntax_errors_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "broken.toml",
        "[[pools]]\nname = \"cache\nlisten = 3\n",
    );
    let out = run_shardgate(&[&"check", &"-c", &path]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2:", path.display())), "{err}");
}

#[test]
fn check_needs_the_certificate_files_and_route_and_diff_do_not() {
    // A production config read on a laptop: the keys are not there.
    let dir = tempfile::tempdir().unwrap();
    let text = "[[pools]]\nname = \"web\"\nlisten = \"127.0.0.1:8443\"\n[pools.tls]\n\
                cert = \"/etc/shardgate/tls/web.crt\"\nkey = \"/etc/shardgate/tls/web.key\"\n\
                [[pools.backends]]\naddress = \"127.0.0.1:9001\"\n";
    let path = write(&dir, "prod.toml", text);
    let out = run_shardgate(&[&"check", &"-c", &path]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "5:8: pools[0].tls.cert: cannot read /etc/shardgate/tls/web.crt: ",
        "6:7: pools[0].tls.key: cannot read /etc/shardgate/tls/web.key: ",
    ] {
        assert!(
            err.contains(&format!("{}:{expected}", path.display())),
            "both missing files are named: {err}"
        );
    }
    let out = run_shardgate(&[&"route", &"-c", &path, &"/users/42"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("/users/42\t127.0.0.1:9001\t"));
    let out = run_shardgate(&[&"diff", &path, &path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_and_run_refuse_an_unusable_admin_token_file_alike() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-token");
    let empty = write(&dir, "empty-token", "  \n");
    for (token, why) in [
        (&missing, format!("cannot read {}: ", missing.display())),
        (
            &empty,
            format!(
                "{}: the token must be 1-4096 printable characters",
                empty.display()
            ),
        ),
    ] {
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n[[pools]]\nname = \"web\"\n\
             listen = \"127.0.0.1:0\"\n[[pools.backends]]\naddress = \"127.0.0.1:9001\"\n",
            token.display()
        );
        let path = write(&dir, "sg.toml", &text);
        let expected = format!("{}:3:14: admin.token_file: {why}", path.display());
        for command in ["check", "run"] {
            // `run` refuses before it binds anything, so it needs no timeout.
            let out = run_shardgate(&[&command, &"-c", &path]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{command}: {err}");
            assert!(err.contains(&expected), "{command}: {err}");
        }
    }
}

#[test]
fn diff_lists_the_settings_a_reload_would_change_and_warns_of_a_key_change() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |name: &str, extra: &str| {
        let text = format!(
            "[server]\nshutdown_grace = \"5s\"\n[[pools]]\nname = \"web\"\n\
             listen = \"127.0.0.1:8080\"\n{extra}\n[[pools.backends]]\naddress = \"127.0.0.1:9001\"\n\
             [[pools.backends]]\naddress = \"127.0.0.1:9002\"\n"
        );
        write(&dir, name, &text)
    };
    let old = cfg("old.toml", "key = [\"path\"]");
    let new = cfg("new.toml", "key = [\"uri\"]\nretries = 0");
    let out = run_shardgate(&[&"diff", &old, &new]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("pool web: +0 -0 ~0 backends, 0.00% of keys move\n"),
        "{text}"
    );
    assert!(
        text.contains("\nsettings changed: web: key [path] → [uri], retries 1 → 0\n"),
        "{text}"
    );
    assert!(
        text.contains("note: pool web: its key sources changed"),
        "{text}"
    );
    assert!(
        text.lines().all(|l| l == l.trim_end()),
        "no trailing blanks: {text:?}"
    );
}

#[test]
fn check_warns_of_an_sni_certificate_that_does_not_carry_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = write(&dir, "c.pem", &made.cert.pem());
    let key = write(&dir, "k.pem", &made.signing_key.serialize_pem());
    let text = format!(
        "[[pools]]\nname = \"web\"\nlisten = \"127.0.0.1:8443\"\n[pools.tls]\n\
         cert = \"{c}\"\nkey = \"{k}\"\n[[pools.tls.sni]]\nnames = [\"api.example\", \"localhost\"]\n\
         cert = \"{c}\"\nkey = \"{k}\"\n[[pools.backends]]\naddress = \"127.0.0.1:9001\"\n",
        c = cert.display(),
        k = key.display()
    );
    let path = write(&dir, "sni.toml", &text);
    let out = run_shardgate(&[&"check", &"-c", &path]);
    // A warning, not a refusal: a test setup may mean it.
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "pools[0].tls.sni[0]: the certificate in {} is not valid for api.example (it names \
             localhost)",
            cert.display()
        )),
        "{err}"
    );
}

#[test]
fn config_path_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "bad.toml", "");
    let out = Command::new(BIN)
        .arg("check")
        .env("SHARDGATE_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pools"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_names_the_backend_the_proxy_uses() {
    let mut bs = Vec::new();
    for i in 0..5 {
        bs.push(TestBackend::start(&format!("node-{i}")).await);
    }
    let proxy = TestProxy::start(&pool("cache", &refs(&bs)).toml()).await;
    let keys: Vec<String> = (0..30).map(|i| format!("/img/{i}.png")).collect();
    let out = Command::new(BIN)
        .args(["route", "-c"])
        .arg(&proxy.config_path)
        .args(&keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), keys.len());
    for (key, line) in keys.iter().zip(lines) {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols[0], key);
        let answered = get(&proxy.url(key)).await;
        assert_eq!(
            cols[1],
            answered.backend(),
            "route and proxy disagree on {key}"
        );
        // Two distinct successors follow, neither of them the owner.
        let then: Vec<&str> = cols[3].trim_start_matches("then: ").split(", ").collect();
        assert_eq!(then.len(), 2);
        assert!(!then.contains(&cols[1]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_reloads_and_exits_0_on_sigterm_after_in_flight_requests() {
    // Two worker threads, each with its own runtime and listening socket (the default layout).
    serve_reload_and_drain(2, Some("per-thread")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_a_work_stealing_runtime_serves_reloads_and_drains_the_same() {
    serve_reload_and_drain(2, Some("work-stealing")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_one_thread_serves_reloads_and_drains_the_same() {
    // 1: a current-thread runtime, where the reload's ring build must not block serving.
    serve_reload_and_drain(1, None).await;
}

async fn serve_reload_and_drain(worker_threads: i64, layout: Option<&str>) {
    let solo = TestBackend::start("solo").await;
    let other = TestBackend::start("other").await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = |b: &TestBackend| {
        let mut c = ConfigToml::new()
            .shutdown_grace(Duration::from_secs(5))
            .worker_threads(worker_threads);
        if let Some(layout) = layout {
            c = c.worker_layout(layout);
        }
        c.pool(pool("p", &[b]).listen(format!("127.0.0.1:{port}")))
            .toml()
    };
    let path = write(&dir, "run.toml", &config(&solo));
    let mut child = Running::spawn(
        Command::new(BIN)
            .args(["run", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let url = format!("http://127.0.0.1:{port}");
    wait_answering(&format!("{url}/up"), WAIT).await;
    assert_eq!(get(&format!("{url}/k")).await.backend(), "solo");

    // The file now names another backend: it takes over once the reload is in.
    write(&dir, "run.toml", &config(&other));
    signal(&child, "HUP");
    eventually(
        "the reloaded config routes to the new backend",
        WAIT,
        || {
            let url = url.clone();
            async move { get(&format!("{url}/k")).await.backend() == "other" }
        },
    )
    .await;

    // Counted before the request goes: read after, it could already include it, and the wait
    // below would never end.
    let before = other.requests();
    let slow = tokio::spawn({
        let url = url.clone();
        async move { get(&format!("{url}/slow/500")).await }
    });
    eventually("the slow request reached the backend", WAIT, || async {
        other.requests() > before
    })
    .await;
    sigterm(&child);
    let a = slow.await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "in-flight request cut by SIGTERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, WAIT))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn run_refuses_a_bad_config_with_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "bad.toml", "[[pools]]\nname = \"x\"\n");
    let out = run_shardgate(&[&"run", &"-c", &path]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing field `listen`"));
}

#[test]
fn run_says_which_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "busy.toml",
        &pool("p", &[])
            .listen(addr)
            .backend("b", "127.0.0.1:1")
            .toml(),
    );
    let out = run_shardgate(&[&"run", &"-c", &path]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr} for pool p")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_four_backends_with_affinity() {
    let (mut child, port, admin) = start_demo().await;
    let url = format!("http://127.0.0.1:{port}");
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        let a = get(&format!("{url}/users/{i}")).await;
        let again = get(&format!("{url}/users/{i}")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.backend(), again.backend());
        assert!(
            a.body
                .starts_with(&format!("{}: GET /users/{i}", a.backend())),
            "{}",
            a.body
        );
        seen.insert(a.backend().to_owned());
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    // A reload signal, as an operator would send `run`, does not end the demo.
    signal(&child, "HUP");
    assert_eq!(get(&format!("{url}/users/1")).await.status, StatusCode::OK);
    assert_eq!(
        get(&format!("http://127.0.0.1:{admin}/healthz"))
            .await
            .status,
        StatusCode::OK
    );
    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || {
        let s = wait_exit(&mut child, WAIT);
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        (s, out)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0));
    assert!(
        status.1.contains("curl -s"),
        "demo printed no curl commands: {}",
        status.1
    );
}

/// The fixture that writes the other tests' configs writes files the proxy accepts.
#[test]
fn the_test_config_builder_writes_valid_files() {
    let text = ConfigToml::new()
        .access_log(true)
        .pool(
            pool("cache", &[])
                .backend("a", "127.0.0.1:1")
                .backend("b \"2\"", "127.0.0.1:2")
                .weight("a", 3)
                .key(&["header:x-k", "path"])
                .retries(2)
                .request_timeout(Duration::from_millis(300))
                .health(
                    health(Check::Http)
                        .interval(Duration::from_millis(150))
                        .timeout(Duration::from_millis(50)),
                ),
        )
        .toml();
    let config = shardgate::config::parse(&text, "test").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let p = &config.pools[0];
    assert_eq!(p.name, "cache");
    assert_eq!(p.backends[0].weight, 3);
    assert_eq!(p.backends[1].id, "b \"2\"");
}

#[test]
fn a_config_file_over_16_mib_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.toml");
    let mut text = String::from("# padding\n");
    text.push_str(&"#".repeat(17 << 20));
    std::fs::write(&path, text).unwrap();
    let out = run_shardgate(&[&"check", &"-c", &path]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is larger than 16 MiB; refusing to read it"),
        "{err}"
    );
}
