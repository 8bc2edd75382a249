//! The structure, checked: the module graph built from the code's own `crate::`,
//! `super::` and `self::` paths (outside `#[cfg(test)]`) has no cycle, no module
//! imports a module of a higher layer than its own, the pure layers use no I/O crate,
//! and no function is longer than a screenful. The layers are read from the table
//! in ARCHITECTURE.md, so the document and the check cannot drift apart.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Functions longer than this many lines are refused (tests and data tables excepted).
const MAX_FN_LINES: usize = 120;

/// Functions that are tables of data, not logic: allowed to be long.
/// `sample_job`: the sample job every preview, check and golden file renders, one
/// field per line.
const DATA_TABLES: &[&str] = &["sample_job"];

/// Crates and modules that do I/O or keep time: none of them in a pure layer.
const IMPURE: &[&str] = &[
    "tokio::net",
    "tokio::fs",
    "tokio::time",
    "sled",
    "reqwest",
    "hyper",
    "axum",
    "aws_config",
    "aws_sdk_deadline",
    "aws_sdk_cloudwatchlogs",
    "aws_smithy",
];

#[derive(Debug, Clone)]
struct Layer {
    rank: usize,
    name: String,
    /// Module paths (`watch::diff`, `store`); a module belongs to the row that names
    /// the longest prefix of its path.
    modules: Vec<String>,
    pure: bool,
}

/// The layer table: rows `| rank | name | modules |` between the markers
/// `<!-- layers -->` and `<!-- /layers -->`; modules are in backticks; a name that
/// ends in `(pure)` marks a layer that may not do I/O.
fn parse_layers(doc: &str) -> Vec<Layer> {
    let start = doc
        .find("<!-- layers -->")
        .expect("ARCHITECTURE.md has <!-- layers -->");
    let end = doc
        .find("<!-- /layers -->")
        .expect("ARCHITECTURE.md has <!-- /layers -->");
    let mut out = Vec::new();
    for line in doc[start..end].lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() < 3 {
            continue;
        }
        let Ok(rank) = cells[0].trim().parse::<usize>() else {
            continue;
        };
        let name = cells[1].trim().to_string();
        let modules = cells[2]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        out.push(Layer {
            rank,
            pure: name.contains("(pure)"),
            name,
            modules,
        });
    }
    out
}

/// Comments, string and char literals blanked (newlines kept), so a path in a doc
/// comment or a message is not an import.
fn blank(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let n = b.len();
    let wipe = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in out.iter_mut().take(to.min(n)).skip(from) {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < n {
        if b[i..].starts_with(b"//") {
            let j = src[i..].find('\n').map_or(n, |j| i + j);
            wipe(&mut out, i, j);
            i = j;
        } else if b[i..].starts_with(b"/*") {
            let j = src[i + 2..].find("*/").map_or(n, |j| i + 2 + j + 2);
            wipe(&mut out, i, j);
            i = j;
        } else if (b[i] == b'r' || b[i] == b'b')
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
            && raw_string_start(&b[i..]).is_some()
        {
            let (hashes, open) = raw_string_start(&b[i..]).unwrap();
            let close = format!("\"{}", "#".repeat(hashes));
            let j = src[i + open..]
                .find(&close)
                .map_or(n, |j| i + open + j + close.len());
            wipe(&mut out, i, j);
            i = j;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < n && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            wipe(&mut out, i, j + 1);
            i = j + 1;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{1F600}'), not a lifetime.
            let rest = &src[i + 1..];
            let len = if rest.starts_with('\\') {
                rest.find('\'').map(|k| k + 2)
            } else {
                rest.chars()
                    .next()
                    .filter(|c| rest[c.len_utf8()..].starts_with('\''))
                    .map(|c| c.len_utf8() + 2)
            };
            match len {
                Some(l) if l <= 12 => {
                    wipe(&mut out, i, i + l);
                    i += l;
                }
                _ => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `r"`, `r#"`, `br"` … : (number of hashes, length of the opening).
fn raw_string_start(b: &[u8]) -> Option<(usize, usize)> {
    let mut k = 0;
    if b.first() == Some(&b'b') {
        k += 1;
    }
    if b.get(k) != Some(&b'r') {
        return None;
    }
    k += 1;
    let hashes = b[k..].iter().take_while(|c| **c == b'#').count();
    (b.get(k + hashes) == Some(&b'"')).then_some((hashes, k + hashes + 1))
}

/// The end (exclusive) of the item starting at `from`: its `;` or its balanced
/// `{ … }`, whichever comes first.
fn item_end(s: &str, from: usize) -> usize {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b';' if depth == 0 => return i + 1,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// Items under `#[cfg(test)]` blanked: tests may import anything.
fn without_tests(s: &str) -> String {
    let mut out = s.to_string();
    let mut from = 0;
    while let Some(k) = out[from..].find("#[cfg(test)]") {
        let at = from + k;
        let end = item_end(&out, at + "#[cfg(test)]".len());
        let blanked: String = out[at..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(at..end, &blanked);
        from = at + blanked.len();
    }
    out
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `a::b`; `src/lib.rs` → `` (the root).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    match last.as_str() {
        "lib.rs" if parts.is_empty() => {}
        "main.rs" if parts.is_empty() => return None,
        "mod.rs" => {}
        f => parts.push(f.strip_suffix(".rs")?.to_string()),
    }
    Some(parts.join("::"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

struct Module {
    path: String,
    file: PathBuf,
    /// Source with comments, literals and test items blanked.
    code: String,
}

fn modules(src: &Path) -> Vec<Module> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files
        .into_iter()
        .filter_map(|f| {
            let path = module_of(src, &f)?;
            let text = std::fs::read_to_string(&f).unwrap();
            Some(Module {
                path,
                code: without_tests(&blank(&text)),
                // Named from the repository root, as a reader would open it.
                file: Path::new("src").join(f.strip_prefix(src).unwrap()),
            })
        })
        .collect()
}

/// The longest prefix of `segments` that is a module.
fn resolve(known: &BTreeSet<String>, segments: &[&str]) -> Option<String> {
    (0..=segments.len())
        .rev()
        .map(|k| segments[..k].join("::"))
        .find(|p| known.contains(p))
}

/// Every path a module names: `crate::a::b`, `super::x`, `self::y`, and the
/// members of a `{…}` group after any of them.
fn named_paths(m: &Module) -> Vec<Vec<String>> {
    let code = &m.code;
    let here: Vec<String> = if m.path.is_empty() {
        vec![]
    } else {
        m.path.split("::").map(str::to_string).collect()
    };
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let at_word = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        let head = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|h| at_word && code[i..].starts_with(h));
        let Some(head) = head else {
            i += 1;
            continue;
        };
        // The module the path starts from.
        let mut base: Vec<String> = match head {
            "crate::" => vec![],
            // `self` is this module, whether it is `a/b.rs` or `a/b/mod.rs`.
            "self::" => here.clone(),
            _ => {
                let mut b = here.clone();
                b.pop();
                b
            }
        };
        let mut j = i + head.len();
        // Further `super::` steps.
        while code[j..].starts_with("super::") {
            base.pop();
            j += "super::".len();
        }
        let rest = &code[j..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let tail = rest[..len].trim_end_matches(':');
        let mut path = base.clone();
        path.extend(
            tail.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        if rest[len..].starts_with('{') || (tail.is_empty() && rest.starts_with('{')) {
            // A group: each member is a path from `path`.
            let close = item_end(rest, len);
            let group = &rest[len + 1..close.saturating_sub(1).max(len + 1)];
            for member in group.split(',') {
                let member = member.trim().split(" as ").next().unwrap_or("").trim();
                let mut p = path.clone();
                p.extend(
                    member
                        .split("::")
                        .map(|s| {
                            s.trim_matches(|c: char| c == '{' || c == '}' || c.is_whitespace())
                        })
                        .filter(|s| !s.is_empty() && *s != "self")
                        .map(str::to_string),
                );
                out.push(p);
            }
        } else {
            out.push(path);
        }
        i = j + len;
    }
    out
}

#[derive(Debug, Default)]
struct Report {
    upward: Vec<String>,
    unplaced: Vec<String>,
    cycles: Vec<String>,
    impure: Vec<String>,
    long_fns: Vec<String>,
}

impl Report {
    fn problems(&self) -> Vec<String> {
        [
            &self.upward,
            &self.unplaced,
            &self.cycles,
            &self.impure,
            &self.long_fns,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

fn layer_of<'a>(layers: &'a [Layer], module: &str) -> Option<&'a Layer> {
    layers
        .iter()
        .flat_map(|l| l.modules.iter().map(move |m| (m, l)))
        .filter(|(m, _)| module == m.as_str() || module.starts_with(&format!("{m}::")))
        .max_by_key(|(m, _)| m.len())
        .map(|(_, l)| l)
}

/// The edges `from → to` between modules, with the names that tie them.
fn graph(mods: &[Module]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let known: BTreeSet<String> = mods.iter().map(|m| m.path.clone()).collect();
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for m in mods {
        for p in named_paths(m) {
            let segs: Vec<&str> = p.iter().map(String::as_str).collect();
            let Some(to) = resolve(&known, &segs) else {
                continue;
            };
            if to == m.path || to.is_empty() {
                continue;
            }
            edges
                .entry((m.path.clone(), to))
                .or_default()
                .insert(p.join("::"));
        }
    }
    edges
}

fn find_cycles(edges: &BTreeMap<(String, String), BTreeSet<String>>) -> Vec<String> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().push(b);
    }
    // Tarjan's strongly connected components.
    struct St<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, next: &BTreeMap<&'a str, Vec<&'a str>>, st: &mut St<'a>) {
        let i = st.index.len();
        st.index.insert(v, i);
        st.low.insert(v, i);
        st.stack.push(v);
        st.on.insert(v);
        for &w in next.get(v).into_iter().flatten() {
            if !st.index.contains_key(w) {
                visit(w, next, st);
                let lw = st.low[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if st.on.contains(w) {
                let iw = st.index[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if st.low[v] == st.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on.remove(w);
                comp.push(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                st.out.push(comp);
            }
        }
    }
    let mut st = St {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    let nodes: Vec<&str> = next.keys().copied().collect();
    for v in nodes {
        if !st.index.contains_key(v) {
            visit(v, &next, &mut st);
        }
    }
    st.out
        .iter()
        .map(|comp| {
            let set: BTreeSet<&str> = comp.iter().copied().collect();
            let ties: Vec<String> = edges
                .iter()
                .filter(|((a, b), _)| set.contains(a.as_str()) && set.contains(b.as_str()))
                .map(|((a, b), names)| {
                    format!(
                        "{a} -> {b} ({})",
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            format!(
                "import cycle among {}: {}",
                comp.join(", "),
                ties.join("; ")
            )
        })
        .collect()
}

/// Functions over `MAX_FN_LINES` lines outside test items.
fn long_functions(m: &Module) -> Vec<String> {
    let code = &m.code;
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = code[from..].find("fn ") {
        let at = from + k;
        from = at + 3;
        if at > 0 {
            let prev = code.as_bytes()[at - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' {
                continue;
            }
        }
        let name: String = code[at + 3..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let Some(open) = code[at..].find(['{', ';']).map(|o| at + o) else {
            break;
        };
        if code.as_bytes()[open] == b';' {
            continue;
        }
        let end = item_end(code, open);
        let lines = code[at..end].lines().count();
        if lines > MAX_FN_LINES && !DATA_TABLES.contains(&name.as_str()) {
            let line = code[..at].lines().count() + 1;
            out.push(format!(
                "{}:{line}: fn {name} is {lines} lines (at most {MAX_FN_LINES}): split it",
                m.file.display()
            ));
        }
    }
    out
}

fn check(root: &Path) -> Report {
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let layers = parse_layers(&doc);
    assert!(!layers.is_empty(), "ARCHITECTURE.md's layer table is empty");
    let mods = modules(&root.join("src"));
    let mut r = Report::default();
    for m in &mods {
        if !m.path.is_empty() && layer_of(&layers, &m.path).is_none() {
            r.unplaced.push(format!(
                "module {} ({}) is in no row of the layer table",
                m.path,
                m.file.display()
            ));
        }
        if let Some(l) = layer_of(&layers, &m.path).filter(|l| l.pure) {
            for bad in IMPURE {
                let hit = m.code.match_indices(bad).any(|(i, _)| {
                    let before = m.code[..i].chars().next_back();
                    let after = m.code[i + bad.len()..].chars().next();
                    !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                        && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if hit {
                    r.impure.push(format!(
                        "{} is in layer {} \"{}\" and may not use {bad}",
                        m.path, l.rank, l.name
                    ));
                }
            }
        }
        r.long_fns.extend(long_functions(m));
    }
    let edges = graph(&mods);
    for ((from, to), names) in &edges {
        if let (Some(a), Some(b)) = (layer_of(&layers, from), layer_of(&layers, to))
            && b.rank > a.rank
        {
            r.upward.push(format!(
                "{from} (layer {} \"{}\") imports {to} (layer {} \"{}\") upward: {}",
                a.rank,
                a.name,
                b.rank,
                b.name,
                names.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    r.cycles = find_cycles(&edges);
    r
}

#[test]
fn imports_point_down_the_layer_table_and_never_in_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let problems = check(root).problems();
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_source_root_holds_only_the_entry_points_folders_and_listed_helpers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let layers = parse_layers(&doc);
    for entry in std::fs::read_dir(root.join("src")).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            continue;
        }
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(module) = name.strip_suffix(".rs") else {
            panic!("src/{name}: only Rust files and folders at the top of src/");
        };
        if module == "main" || module == "lib" {
            continue;
        }
        assert!(
            layers.iter().any(|l| l.modules.iter().any(|m| m == module)),
            "src/{name} sits at the top of src/ without a row in the layer table"
        );
        let lines = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(
            lines <= 80,
            "src/{name} is {lines} lines: a top-level helper must fit a screen"
        );
    }
}

/// A small tree written for the checker: a clean one passes; an upward import, a
/// circle, an I/O crate in a pure layer and a long function are each named.
mod checker {
    use super::*;

    const TABLE: &str = "<!-- layers -->\n\
        | rank | layer | modules |\n|---|---|---|\n\
        | 0 | foundation (pure) | `domain` |\n\
        | 1 | decisions (pure) | `watch::diff` |\n\
        | 2 | adapters | `store` |\n\
        | 3 | loops | `watch` |\n\
        <!-- /layers -->\n";

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ARCHITECTURE.md"), TABLE).unwrap();
        for (path, text) in files {
            let p = dir.path().join("src").join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    fn clean() -> Vec<(&'static str, String)> {
        vec![
            ("lib.rs", "pub mod domain; pub mod store; pub mod watch;".into()),
            ("domain/mod.rs", "pub struct JobKey;".into()),
            ("store/mod.rs", "use crate::domain::JobKey;\npub struct Store(JobKey);".into()),
            ("watch/mod.rs", "pub mod diff;\nuse crate::store::Store;\nuse super::watch::diff::diff;".into()),
            (
                "watch/diff.rs",
                "use crate::domain::JobKey;\n// crate::store::Store in a comment is no import\nconst S: &str = \"crate::store::Store\";\npub fn diff(_: &JobKey) {}\n#[cfg(test)]\nmod tests { use crate::store::Store; }".into(),
            ),
        ]
    }

    fn run(files: Vec<(&'static str, String)>) -> Report {
        let owned: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
        let dir = tree(&owned);
        check(dir.path())
    }

    fn with(path: &'static str, text: &str) -> Vec<(&'static str, String)> {
        let mut f = clean();
        f.retain(|(p, _)| *p != path);
        f.push((path, text.to_string()));
        f
    }

    #[test]
    fn a_clean_tree_passes() {
        let r = run(clean());
        assert!(r.problems().is_empty(), "{:?}", r.problems());
    }

    #[test]
    fn a_decision_importing_the_store_is_named() {
        let r = run(with(
            "watch/diff.rs",
            "use crate::domain::JobKey;\nuse crate::store::Store;\npub fn diff(_: &JobKey, _: &Store) {}",
        ));
        assert_eq!(r.upward.len(), 1, "{:?}", r.problems());
        assert!(
            r.upward[0]
                .starts_with("watch::diff (layer 1 \"decisions (pure)\") imports store (layer 2"),
            "{}",
            r.upward[0]
        );
        assert!(r.upward[0].ends_with("store::Store"), "{}", r.upward[0]);
    }

    #[test]
    fn a_grouped_or_relative_upward_import_is_named() {
        let r = run(with(
            "domain/mod.rs",
            "pub struct JobKey;\nuse crate::{store::Store, watch};",
        ));
        assert_eq!(r.upward.len(), 2, "{:?}", r.problems());
        let r = run(with(
            "watch/diff.rs",
            "use super::super::store::Store;\npub fn diff(_: &Store) {}",
        ));
        assert_eq!(r.upward.len(), 1, "{:?}", r.problems());
    }

    #[test]
    fn a_circle_is_named_with_its_edges() {
        let r = run(with(
            "store/mod.rs",
            "use crate::domain::JobKey;\npub struct Store(JobKey);\nfn f() { crate::watch::poll(); }",
        ));
        assert_eq!(r.cycles.len(), 1, "{:?}", r.problems());
        assert!(r.cycles[0].contains("store -> watch"), "{}", r.cycles[0]);
        assert!(r.cycles[0].contains("watch -> store"), "{}", r.cycles[0]);
    }

    #[test]
    fn io_in_a_pure_layer_is_named() {
        let r = run(with(
            "watch/diff.rs",
            "pub fn diff() { let _ = tokio::time::sleep(std::time::Duration::ZERO); }",
        ));
        assert_eq!(r.impure.len(), 1, "{:?}", r.problems());
        assert!(r.impure[0].contains("tokio::time"), "{}", r.impure[0]);
        // The same in the loop layer is fine.
        let r = run(with(
            "watch/mod.rs",
            "pub mod diff;\nasync fn tick() { tokio::time::sleep(std::time::Duration::ZERO).await; }",
        ));
        assert!(r.problems().is_empty(), "{:?}", r.problems());
    }

    #[test]
    fn a_module_outside_the_table_and_a_long_function_are_named() {
        let body = "    let _x = 1;\n".repeat(MAX_FN_LINES);
        let mut f = with("watch/diff.rs", &format!("pub fn diff() {{\n{body}}}\n"));
        f.push(("cli/mod.rs", "pub fn main() {}".into()));
        let r = run(f);
        assert_eq!(r.unplaced.len(), 1, "{:?}", r.problems());
        assert!(
            r.unplaced[0].starts_with("module cli "),
            "{}",
            r.unplaced[0]
        );
        assert_eq!(r.long_fns.len(), 1, "{:?}", r.problems());
        assert!(
            r.long_fns[0].contains("fn diff is 122 lines"),
            "{}",
            r.long_fns[0]
        );
    }
}
