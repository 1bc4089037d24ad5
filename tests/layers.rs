//! The code map as a test: every `crate::` and `super::` path in src/ is read, and
//! - a module only uses modules of its own layer or of layers below it (the README's code map),
//! - no two modules use each other, directly or through others (a module and its own
//!   submodules excepted: `mod.rs` declaring a child and the child using `super::` is the
//!   normal shape of a folder),
//! - routing/ stays pure: no tokio, no hyper, no sockets or files.
//!
//! It reads source text, not the compiler's view, so it assumes two habits the code keeps:
//! paths into the crate are written `crate::…` or `super::…` (no `use crate::{a, b}` across
//! layers is needed, but braces are understood), and comments start their line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom up; a module may use its own layer and those before it.
const LAYERS: &[&str] = &[
    "util", "routing", "config", "state", "observe", "forward", "control", "demo", "cli",
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

/// Paths that follow `prefix::` in `text`, braces expanded: `crate::a::{b, c::d}` gives
/// `a::b` and `a::c::d`.
fn paths_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
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
    // Reads `seg::seg::{…}` at `i`, appending every full path to `out`.
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

/// The modules each module uses: (user, used), excluding ancestors and descendants.
fn edges() -> BTreeSet<(Module, Module)> {
    let mods = modules();
    let known: BTreeSet<Module> = mods.iter().map(|(m, _)| m.clone()).collect();
    // The longest known module that `path` starts with.
    let resolve = |path: &[String]| -> Option<Module> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| known.contains(m))
    };
    let mut out = BTreeSet::new();
    for (module, file) in &mods {
        let text = code(file);
        let mut targets: Vec<Module> = paths_after(&text, "crate")
            .into_iter()
            .filter_map(|p| resolve(&p))
            .collect();
        // `super::x` in module a::b (a::b.rs or a/b/mod.rs alike) means a::x.
        let parent: Module = module[..module.len().saturating_sub(1)].to_vec();
        for p in paths_after(&text, "super") {
            let mut full = parent.clone();
            full.extend(p);
            if let Some(m) = resolve(&full) {
                targets.push(m);
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
fn routing_is_pure() {
    for (module, file) in modules() {
        if module.first().map(String::as_str) != Some("routing") {
            continue;
        }
        let text = code(&file);
        for banned in ["tokio", "hyper", "std::fs", "TcpStream", "TcpListener"] {
            assert!(
                !text.contains(banned),
                "{} uses {banned}: routing/ does no I/O",
                file.display()
            );
        }
    }
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
