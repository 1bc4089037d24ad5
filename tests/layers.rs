//! The code map as a test: every `crate::` and `super::` path in src/ is read, and
//! - a module only uses modules of its own layer or of layers below it (the README's code map),
//! - no two modules use each other, directly or through others (a module and its own
//!   submodules excepted: `mod.rs` declaring a child and the child using `super::` is the
//!   normal shape of a folder),
//! - routing/ and http1/ stay pure: no tokio, no hyper, no sockets or files.
//!
//! It reads source text, not the compiler's view, so it assumes habits the code keeps: paths
//! into the crate are written `crate::…` or `super::…` (braces and `super::super::` are
//! understood, and a name a module re-exports with `pub use` counts as a use of the module it
//! comes from), inline test modules are called `tests`, and comments start their line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom up; a module may use its own layer and those before it.
const LAYERS: &[&str] = &[
    "util", "http1", "routing", "tls", "config", "state", "observe", "forward", "control", "demo",
    "cli", "fuzzing",
];

type Module = Vec<String>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every .rs file under src/ (except the binary's main.rs) with its module path.
fn modules() -> Vec<(Module, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files
        .into_iter()
        .filter(|f| f.file_name().unwrap() != "main.rs")
        .map(|f| {
            let rel = f.strip_prefix(src()).unwrap().with_extension("");
            let mut module: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            (module, f)
        })
        .collect()
}

/// Source without comment lines.
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &[u8], i: &mut usize) -> Option<String> {
    let start = *i;
    while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
        *i += 1;
    }
    (*i > start).then(|| String::from_utf8_lossy(&s[start..*i]).into_owned())
}

fn skip_ws(s: &[u8], i: &mut usize) {
    while *i < s.len() && s[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

/// Reads a use tree `seg::seg::{…}` at `i`, appending every full path (after `base`) to `out`.
fn tree(s: &[u8], i: &mut usize, base: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = base;
    loop {
        skip_ws(s, i);
        if *i < s.len() && s[*i] == b'{' {
            *i += 1;
            loop {
                skip_ws(s, i);
                if *i >= s.len() || s[*i] == b'}' {
                    *i += 1;
                    return;
                }
                tree(s, i, path.clone(), out);
                skip_ws(s, i);
                if *i < s.len() && s[*i] == b',' {
                    *i += 1;
                }
            }
        }
        match ident(s, i) {
            Some(seg) => path.push(seg),
            None => break,
        }
        if s[*i..].starts_with(b"::") {
            *i += 2;
        } else {
            break;
        }
    }
    out.push(path);
}

/// Paths that follow `prefix::` in `text`, braces expanded: `crate::a::{b, c::d}` gives
/// `a::b` and `a::c::d`; `super::super::x` gives `super::x` (one more level up).
fn paths_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let s = text.as_bytes();
    let needle = format!("{prefix}::");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(&needle) {
        let start = from + at;
        let preceded_by_ident = start > 0
            && (s[start - 1].is_ascii_alphanumeric()
                || s[start - 1] == b'_'
                || s[start - 1] == b':');
        let mut i = start + needle.len();
        if !preceded_by_ident {
            tree(s, &mut i, Vec::new(), &mut out);
        }
        from = i.max(start + needle.len());
    }
    out
}

/// The paths of `pub use` / `pub(crate) use` items in `text`, as written.
fn reexports(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        let Some(rest) = line
            .strip_prefix("pub use ")
            .or_else(|| line.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        let mut i = 0;
        tree(rest.as_bytes(), &mut i, Vec::new(), &mut out);
    }
    out
}

/// A path as written in module `base`, made absolute: `crate::` dropped, each `super::` one
/// level up from `base`, `self::` and bare paths (a child module, in a `use`) under `base`.
fn absolute(base: &[String], path: &[String]) -> Vec<String> {
    match path.first().map(String::as_str) {
        Some("crate") => path[1..].to_vec(),
        Some("super") => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            let mut full = base[..base.len().saturating_sub(ups)].to_vec();
            full.extend_from_slice(&path[ups..]);
            full
        }
        Some("self") => [base, &path[1..]].concat(),
        _ => [base, path].concat(),
    }
}

/// The modules each module uses: (user, used), excluding ancestors and descendants.
fn edges() -> BTreeSet<(Module, Module)> {
    let mods = modules();
    let known: BTreeSet<Module> = mods.iter().map(|(m, _)| m.clone()).collect();
    let longest = |path: &[String]| -> Option<usize> {
        (1..=path.len()).rev().find(|&n| known.contains(&path[..n]))
    };
    // Names a module re-exports (`pub(crate) use request::handle;` in forward/mod.rs), so that
    // `super::handle` from forward::listener counts as a use of forward::request.
    let mut reexported: BTreeMap<(Module, String), Module> = BTreeMap::new();
    for (module, file) in &mods {
        for path in reexports(&code(file)) {
            let full = absolute(module, &path);
            if let (Some(n), Some(name)) = (longest(&full), path.last()) {
                reexported.insert((module.clone(), name.clone()), full[..n].to_vec());
            }
        }
    }
    // The module an absolute path lands in, following one re-export.
    let resolve = |path: &[String]| -> Option<Module> {
        let n = longest(path)?;
        let module = path[..n].to_vec();
        match path.get(n) {
            Some(name) => Some(
                reexported
                    .get(&(module.clone(), name.clone()))
                    .cloned()
                    .unwrap_or(module),
            ),
            None => Some(module),
        }
    };
    let mut out = BTreeSet::new();
    for (module, file) in &mods {
        let text = code(file);
        // An inline `mod tests` is a module of its own: there, `super::` is the file's module.
        let (body, tests) = match text.find("\nmod tests {") {
            Some(at) => text.split_at(at),
            None => (text.as_str(), ""),
        };
        let tests_module: Module = [module.as_slice(), &["tests".to_owned()]].concat();
        let mut targets: Vec<Module> = Vec::new();
        for (part, base) in [(body, module), (tests, &tests_module)] {
            for prefix in ["crate", "super"] {
                for p in paths_after(part, prefix) {
                    let written: Vec<String> =
                        std::iter::once(prefix.to_owned()).chain(p).collect();
                    targets.extend(resolve(&absolute(base, &written)));
                }
            }
        }
        for t in targets {
            let related = t.starts_with(module) || module.starts_with(&t);
            if !related && !t.is_empty() {
                out.insert((module.clone(), t));
            }
        }
    }
    out
}

fn name(m: &Module) -> String {
    m.join("::")
}

#[test]
fn every_module_belongs_to_a_layer() {
    for (module, file) in modules() {
        if let Some(top) = module.first() {
            assert!(
                LAYERS.contains(&top.as_str()),
                "{}: `{top}` is not in the layer list of tests/layers.rs (and the README code map)",
                file.display()
            );
        }
    }
}

#[test]
fn dependencies_only_point_down() {
    let rank = |m: &Module| LAYERS.iter().position(|l| *l == m[0]).unwrap();
    let up: Vec<String> = edges()
        .into_iter()
        .filter(|(from, to)| !from.is_empty() && from[0] != to[0] && rank(to) > rank(from))
        .map(|(from, to)| format!("{} uses {}", name(&from), name(&to)))
        .collect();
    assert!(
        up.is_empty(),
        "dependencies pointing up:\n{}",
        up.join("\n")
    );
}

#[test]
fn no_import_cycles() {
    let mut graph: BTreeMap<Module, Vec<Module>> = BTreeMap::new();
    for (from, to) in edges() {
        graph.entry(from).or_default().push(to);
    }
    // Depth-first search; a grey node met again closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Grey,
        Black,
    }
    fn visit(
        m: &Module,
        graph: &BTreeMap<Module, Vec<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(m) {
            Some(Mark::Black) => return None,
            Some(Mark::Grey) => {
                let at = stack.iter().position(|s| s == m).unwrap();
                let mut cycle = stack[at..].to_vec();
                cycle.push(m.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(m.clone(), Mark::Grey);
        stack.push(m.clone());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(m.clone(), Mark::Black);
        None
    }
    let mut marks = BTreeMap::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut marks, &mut Vec::new()) {
            let names: Vec<String> = cycle.iter().map(name).collect();
            panic!("import cycle: {}", names.join(" -> "));
        }
    }
}

#[test]
fn routing_and_http1_are_pure() {
    for (module, file) in modules() {
        if !matches!(
            module.first().map(String::as_str),
            Some("routing" | "http1")
        ) {
            continue;
        }
        let text = code(&file);
        for banned in ["tokio", "hyper", "std::fs", "TcpStream", "TcpListener"] {
            assert!(
                !text.contains(banned),
                "{} uses {banned}: routing/ and http1/ do no I/O",
                file.display()
            );
        }
    }
}

#[test]
fn paths_are_made_absolute() {
    let base: Vec<String> = ["forward", "listener"].map(String::from).to_vec();
    let abs =
        |p: &str| absolute(&base, &p.split("::").map(String::from).collect::<Vec<_>>()).join("::");
    assert_eq!(abs("super::request::handle"), "forward::request::handle");
    assert_eq!(abs("super::super::state::x"), "state::x");
    assert_eq!(abs("crate::util::lock"), "util::lock");
    assert_eq!(abs("self::inner"), "forward::listener::inner");
}

#[test]
fn a_use_through_a_reexport_counts_as_a_use_of_its_source() {
    let e = edges();
    let listener: Module = ["forward", "listener"].map(String::from).to_vec();
    let request: Module = ["forward", "request"].map(String::from).to_vec();
    assert!(
        e.contains(&(listener, request)),
        "forward::listener uses forward::request through `super::handle`"
    );
}

#[test]
fn the_path_reader_expands_braces() {
    let paths = paths_after(
        "use crate::a::{b, c::{d, e}};\nlet x = crate::f::g(); my_crate::h;",
        "crate",
    );
    let got: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(got, ["a::b", "a::c::d", "a::c::e", "f::g"]);
}
