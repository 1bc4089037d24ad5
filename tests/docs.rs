//! The documentation is kept true by running it: every example that shows a command and its
//! output is run and compared, the README's tour is replayed against a real demo, and the
//! reference tables are compared with the code they describe.
//!
//! In README.md and docs/*.md, a fenced block line `$ shardgate ARGS` (or `$ curl ...` in the
//! README tour) is a command; the lines after it, up to the next `$ ` line or the block's end,
//! are its exact output (trailing spaces aside).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use http::{Request, StatusCode};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// README.md and every page under docs/.
fn pages() -> Vec<String> {
    let mut pages = vec!["README.md".to_owned()];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(format!(
                "docs/{}",
                path.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    pages.sort();
    pages
}

/// (command, expected output lines) for each `$ ` line in the fenced blocks of `text`.
fn examples(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_block = false;
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            out.extend(current.take());
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            out.extend(current.take());
            current = Some((cmd.to_owned(), Vec::new()));
        } else if let Some((_, lines)) = &mut current {
            lines.push(line.trim_end().to_owned());
        }
    }
    out
}

/// Words of a command line; single quotes group, as in a shell.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

#[test]
fn every_shardgate_example_prints_what_the_docs_say() {
    let mut ran = 0;
    for page in pages() {
        for (cmd, want) in examples(&read(&page)) {
            let args = words(&cmd);
            if args[0] != "shardgate" {
                continue;
            }
            let out = Command::new(BIN)
                .args(&args[1..])
                .current_dir(root())
                .output()
                .unwrap();
            let mut got = String::from_utf8_lossy(&out.stdout).into_owned();
            got.push_str(&String::from_utf8_lossy(&out.stderr));
            let got: Vec<String> = got.lines().map(|l| l.trim_end().to_owned()).collect();
            assert_eq!(
                got, want,
                "{page}: `$ {cmd}` prints something else; update the page (or the code)"
            );
            ran += 1;
        }
    }
    assert!(
        ran >= 4,
        "only {ran} examples found: did the pages lose them?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_is_what_the_demo_does() {
    let (mut child, listen, admin) = start_demo().await;
    let mut replayed = 0;
    for (cmd, want) in examples(&read("README.md")) {
        let args = words(&cmd);
        if args[0] != "curl" {
            continue;
        }
        let mut req = Request::get("/");
        let mut url = None;
        let mut discard = false;
        let mut rest = args[1..].iter();
        while let Some(a) = rest.next() {
            match a.as_str() {
                "-s" => {}
                "-o" => {
                    assert_eq!(rest.next().unwrap(), "/dev/null", "`{cmd}`");
                    discard = true;
                }
                "-H" => {
                    let (k, v) = rest.next().unwrap().split_once(": ").unwrap();
                    req = req.header(k, v);
                }
                "-X" => req = req.method(rest.next().unwrap().as_str()),
                u if u.starts_with('-') => {
                    panic!("README tour: `{cmd}`: {u} is not understood here")
                }
                u => url = Some(u.to_owned()),
            }
        }
        let url = url
            .expect("a URL")
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{listen}"))
            .replace("127.0.0.1:9901", &format!("127.0.0.1:{admin}"));
        let a = send(&client(), req.uri(url).body(empty()).unwrap()).await;
        assert_eq!(a.status, StatusCode::OK, "README tour: `{cmd}`: {}", a.body);
        let got: Vec<&str> = if discard {
            Vec::new()
        } else {
            a.body.lines().collect()
        };
        assert_eq!(got, want, "README tour: `{cmd}`");
        replayed += 1;
    }
    assert!(replayed >= 6, "only {replayed} tour steps found");
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, WAIT))
        .await
        .unwrap();
    assert!(status.success());
}

#[test]
fn relative_links_point_at_files_that_exist() {
    for page in pages() {
        let text = read(&page);
        let dir = Path::new(&page).parent().unwrap().to_owned();
        for (i, _) in text.match_indices("](") {
            let target = &text[i + 2..];
            let target = &target[..target.find(')').unwrap()];
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            assert!(
                root().join(&dir).join(file).exists(),
                "{page} links to {target}, which does not exist"
            );
        }
    }
}

/// Table rows' first cells that look like `code`, from the tables of `text`.
fn first_cells(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_configuration_table_and_the_reference_config_name_the_same_keys() {
    let table: BTreeSet<String> = first_cells(&read("docs/configuration.md"))
        .into_iter()
        .collect();
    // Keys as the reference file sets them, commented out or not (`name = …`, `# name = …`),
    // under the table they are in: `[[pools.backends]]` then `weight = 1` is
    // `pools[].backends[].weight`.
    let mut reference = BTreeSet::new();
    let mut table_path = String::new();
    for line in read("config/shardgate.toml").lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            table_path = name.replace("pools.", "pools[].") + "[]";
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table_path = name.replace("pools.", "pools[].");
        } else if let Some((key, _)) = line.split_once(" = ")
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            reference.insert(format!("{table_path}.{key}"));
        }
    }
    assert_eq!(
        table, reference,
        "docs/configuration.md and config/shardgate.toml disagree"
    );
}

#[test]
fn the_metrics_table_lists_every_metric_and_no_other() {
    let names = |text: &str| -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        for (i, _) in text.match_indices("shardgate_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            set.insert(name);
        }
        set
    };
    let documented: BTreeSet<String> = first_cells(&read("docs/operations.md"))
        .into_iter()
        .filter(|c| c.starts_with("shardgate_"))
        .collect();
    let defined = names(&read("src/state/metrics.rs"));
    assert_eq!(
        documented, defined,
        "docs/operations.md vs src/state/metrics.rs"
    );
}

/// The string literals a `fn NAME(` in `code` returns from its match arms (`=> "..."`).
fn arm_literals(code: &str, name: &str) -> BTreeSet<String> {
    let body = &code[code.find(&format!("fn {name}(")).unwrap()..];
    let body = &body[..body.find("\n    }\n").unwrap()];
    body.split("=> \"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].to_owned())
        .collect()
}

#[test]
fn the_error_table_lists_every_error_kind() {
    let doc = read("docs/http.md");
    // Rows of the error table: `| 502 | `connect` | ...`, or `| – | `idle_timeout` | ...`.
    let documented: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with("| 4") || l.starts_with("| 5") || l.starts_with("| –"))
        .filter_map(|l| l.split('|').nth(2))
        .filter_map(|cell| cell.trim().strip_prefix('`'))
        .map(|k| k.trim_end_matches('`').to_owned())
        .collect();
    // The kinds are what `ProxyError::kind` returns: its own literals, and for a backend's
    // failures the metric label `UpstreamErrorKind::as_str` gives.
    let mut defined = arm_literals(&read("src/forward/error.rs"), "kind");
    defined.extend(arm_literals(&read("src/state/metrics.rs"), "as_str"));
    assert!(defined.len() >= 10, "{defined:?}: did the parsing break?");
    assert_eq!(documented, defined, "docs/http.md vs ProxyError::kind");
}

#[test]
fn the_readme_keeps_its_two_commands_first() {
    let readme = read("README.md");
    let first_block = &readme[readme.find("```").unwrap()..];
    let first_block = &first_block[..first_block[3..].find("```").unwrap()];
    assert!(first_block.contains("cargo run --release -- demo"));
    assert!(first_block.contains("cargo test"));
}
