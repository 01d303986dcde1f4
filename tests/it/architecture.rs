//! The direction of imports between the top-level modules of `src/` (ARCHITECTURE.md, "Design
//! notes"):
//! every `crate::X` path in `src/**/*.rs` (in `use` lines, in paths, inside `use crate::{…}`
//! groups, `super::` chains that climb to the crate root) is an edge from the file's top-level
//! module to `X`. The graph must have no cycle and stay within [`ALLOWED`], which ARCHITECTURE.md
//! mirrors line for line.
//!
//! Read from the source text, not the compiler: comments are skipped, and an inline module
//! (`mod tests { … }`) counts as part of its file, which is exact for `crate::` paths and
//! approximate only for a `super::super::…` inside one (none today).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which top-level modules each top-level module may import. The faces (`cli`, `daemon`,
/// `server`) sit above the engine (`sync`), which sits above its two ports (`api`, `db`);
/// observation (`telemetry`) is below all of them but `config`, `secret` and `shutdown`.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "cli",
        &[
            "api",
            "config",
            "daemon",
            "db",
            "secret",
            "server",
            "shutdown",
            "sim",
            "sync",
            "telemetry",
            "verify",
            "webhook",
        ],
    ),
    (
        "daemon",
        &["config", "db", "shutdown", "sync", "telemetry", "verify"],
    ),
    ("verify", &["api", "db", "job"]),
    ("webhook", &["config", "db", "secret", "telemetry"]),
    ("server", &["api", "config", "db", "telemetry"]),
    (
        "sync",
        &[
            "api",
            "config",
            "db",
            "job",
            "secret",
            "shutdown",
            "telemetry",
        ],
    ),
    ("sim", &["api", "job"]),
    ("api", &["job", "secret", "shutdown", "telemetry"]),
    ("db", &["config", "job", "secret", "telemetry"]),
    ("job", &[]),
    ("telemetry", &["config", "secret"]),
    ("config", &["secret"]),
    ("secret", &[]),
    ("shutdown", &[]),
];

/// Edges [`ALLOWED`] forbids but that still exist, checked on their own by
/// [`db_and_api_do_not_import_each_other`] so that the other checks pass meanwhile: none since
/// the job model left `api` for `job`, a module both `api` and `db` import.
const PENDING: &[(&str, &str)] = &[];

/// Where the `sync` engine may reach into `telemetry`: progress events and the cycle's heartbeat,
/// nothing that draws.
const SYNC_TELEMETRY_PATHS: &[&str] = &["telemetry::progress", "telemetry::Heartbeat"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `lib.rs` declares.
fn top_level_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .map(str::trim)
        .filter_map(|l| {
            l.strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))
                .and_then(|rest| rest.strip_suffix(';'))
                .map(str::to_owned)
        })
        .collect()
}

/// A source file's module path under `src/` (`db/repo/jobs.rs` → `db::repo::jobs`,
/// `db/mod.rs` → `db`).
fn module_path(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src()).unwrap().with_extension("");
    let mut path: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if path.last().is_some_and(|l| l == "mod") {
        path.pop();
    }
    path
}

/// The code of a file without its comments (line comments outside string literals, and block
/// comments), so that a doc link such as [`crate::api`] is not an import.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let (mut i, mut in_string, mut block_depth) = (0, false, 0);
    while i < chars.len() {
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        if block_depth > 0 {
            if c == '*' && next == Some('/') {
                block_depth -= 1;
                i += 1;
            } else if c == '/' && next == Some('*') {
                block_depth += 1;
                i += 1;
            } else if c == '\n' {
                out.push('\n');
            }
        } else if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(n) = next {
                    out.push(n);
                }
                i += 1;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        } else if c == '/' && next == Some('*') {
            block_depth = 1;
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            // A character literal such as '"': copied whole, so it opens no string.
            out.extend(&chars[i..i + 3]);
            i += 2;
        } else {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
        i += 1;
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of each path in a `{…}` group that starts `s` (just after the `{`).
fn group_heads(s: &str) -> Vec<String> {
    let (mut depth, mut heads, mut at_item_start) = (1, Vec::new(), true);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => at_item_start = true,
            c if at_item_start && depth == 1 && !c.is_whitespace() => {
                heads.push(ident_at(&s[i..]).to_owned());
                at_item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The top-level modules a piece of code names through `crate::` or a `super::` chain that
/// reaches the crate root from `path`, each with the byte offset of the path.
fn referenced_at(code: &str, path: &[String]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let boundary = |i: usize| {
        i == 0 || {
            let before = code[..i].chars().next_back().unwrap();
            !(before.is_alphanumeric() || before == '_')
        }
    };
    for (i, _) in code.match_indices("crate::") {
        if !boundary(i) {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => found.extend(group_heads(group).into_iter().map(|m| (m, i))),
            None => found.push((ident_at(rest).to_owned(), i)),
        }
    }
    for (i, _) in code.match_indices("super::") {
        if !boundary(i) || code[..i].ends_with("super::") {
            continue;
        }
        let mut rest = &code[i..];
        let mut climbs = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = r;
        }
        if climbs >= path.len() {
            match rest.strip_prefix('{') {
                Some(group) => found.extend(group_heads(group).into_iter().map(|m| (m, i))),
                None => found.push((ident_at(rest).to_owned(), i)),
            }
        }
    }
    found
}

fn referenced(code: &str, path: &[String]) -> Vec<String> {
    referenced_at(code, path)
        .into_iter()
        .map(|(m, _)| m)
        .collect()
}

/// Each edge between two top-level modules, with the places it is made (file:line).
type Graph = BTreeMap<(String, String), Vec<String>>;

fn graph() -> Graph {
    let modules = top_level_modules();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges = Graph::new();
    for file in files {
        let path = module_path(&file);
        let Some(owner) = path.first().filter(|m| modules.contains(*m)) else {
            continue; // lib.rs, main.rs
        };
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        for (target, at) in referenced_at(&code, &path) {
            if !modules.contains(&target) || &target == owner {
                continue;
            }
            // `code_of` keeps every line, so a hit's line is its count of newlines before it.
            let line = code[..at].matches('\n').count() + 1;
            let place = format!(
                "{}:{}",
                file.strip_prefix(src().parent().unwrap())
                    .unwrap()
                    .display(),
                line
            );
            edges
                .entry((owner.clone(), target))
                .or_default()
                .push(place);
        }
    }
    edges
}

fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    ALLOWED
        .iter()
        .map(|(from, to)| (*from, to.iter().copied().collect()))
        .collect()
}

fn describe(edges: &[(&(String, String), &Vec<String>)]) -> String {
    edges
        .iter()
        .map(|((from, to), places)| format!("  {from} → {to} ({})", places.join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_parser_sees_the_known_imports() {
    let edges = graph();
    for (from, to) in [("cli", "daemon"), ("daemon", "sync"), ("sync", "db")] {
        assert!(
            edges.contains_key(&(from.to_owned(), to.to_owned())),
            "expected {from} → {to} among {:?}",
            edges.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(
        referenced("use crate::{api::x, db::{a, b}};", &["cli".into()]),
        ["api", "db"]
    );
    assert_eq!(
        referenced(
            &code_of("use super::super::db::Db; // crate::sim"),
            &["sync".into(), "push".into()]
        ),
        ["db"]
    );
    assert!(
        referenced(
            &code_of("/// [`crate::api`]\nlet s = \"//\"; crate::db::x"),
            &[]
        ) == ["db"]
    );
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let edges = graph();
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // Depth-first search; a node met again while still on the stack closes a cycle.
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node);
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        stack.push(node);
        for to in next.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(to, next, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in next.keys() {
        if let Some(cycle) = visit(node, &next, &mut Vec::new(), &mut done) {
            let steps: Vec<_> = cycle
                .windows(2)
                .map(|w| {
                    let key = (w[0].to_owned(), w[1].to_owned());
                    (edges.get_key_value(&key).unwrap().0, &edges[&key])
                })
                .collect();
            panic!(
                "the modules import each other in a cycle: {}\n{}",
                cycle.join(" → "),
                describe(&steps)
            );
        }
    }
}

#[test]
fn imports_follow_the_allowed_directions() {
    let allowed = allowed();
    let modules = top_level_modules();
    let missing: Vec<_> = modules
        .iter()
        .filter(|m| !allowed.contains_key(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "top-level modules without a row in ALLOWED (tests/it/architecture.rs) and in ARCHITECTURE.md's \
         design notes: {missing:?}"
    );
    let edges = graph();
    let forbidden: Vec<_> = edges
        .iter()
        .filter(|((from, to), _)| {
            !allowed[from.as_str()].contains(to.as_str())
                && !PENDING.contains(&(from.as_str(), to.as_str()))
        })
        .collect();
    assert!(
        forbidden.is_empty(),
        "imports against the allowed directions (ARCHITECTURE.md, \"Design notes\"):\n{}",
        describe(&forbidden)
    );
}

/// Expected to fail until the job model moves out of `api` into a module both import; then
/// [`PENDING`] empties.
#[test]
fn db_and_api_do_not_import_each_other() {
    let edges = graph();
    let crossing: Vec<_> = edges
        .iter()
        .filter(|((from, to), _)| {
            matches!((from.as_str(), to.as_str()), ("db", "api") | ("api", "db"))
        })
        .collect();
    assert!(
        crossing.is_empty(),
        "`db` and `api` import each other's types; the job model they share belongs to neither:\n{}",
        describe(&crossing)
    );
}

/// The engine reports progress as events; only the command-line face draws on a terminal.
#[test]
fn only_the_cli_draws_on_the_terminal() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let cli = src().join("cli");
    for file in &files {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        assert!(
            file.starts_with(&cli) || !code.contains("indicatif"),
            "{} uses indicatif: terminal rendering belongs to src/cli",
            file.display()
        );
        if file.starts_with(src().join("sync")) {
            for (i, _) in code.match_indices("telemetry::") {
                let rest = &code[i..];
                assert!(
                    SYNC_TELEMETRY_PATHS.iter().any(|p| rest.starts_with(p)),
                    "{} reaches into telemetry beyond its progress events and heartbeat: {}",
                    file.display(),
                    rest.lines().next().unwrap()
                );
            }
        }
    }
}

/// ARCHITECTURE.md's design notes list the same directions, one line per module:
/// ``- `daemon` → `config`, `db`, …`` (`nothing` for none; words after a name are comments).
#[test]
fn the_architecture_doc_mirrors_the_allowed_directions() {
    let doc = std::fs::read_to_string(src().parent().unwrap().join("ARCHITECTURE.md")).unwrap();
    let notes = doc
        .split_once("## Design notes")
        .expect("ARCHITECTURE.md has design notes")
        .1;
    let notes = notes.split("\n## ").next().unwrap();
    let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in notes.lines() {
        let Some((from, to)) = line
            .trim()
            .strip_prefix("- `")
            .and_then(|l| l.split_once("` → "))
        else {
            continue;
        };
        // Each name is the first `quoted` word of its comma-separated part; `nothing` has none.
        let to = to
            .split(',')
            .filter_map(|t| t.split('`').nth(1))
            .map(str::to_owned)
            .collect();
        listed.insert(from.to_owned(), to);
    }
    let expected: BTreeMap<String, BTreeSet<String>> = allowed()
        .into_iter()
        .map(|(from, to)| (from.to_owned(), to.into_iter().map(str::to_owned).collect()))
        .collect();
    assert_eq!(
        listed, expected,
        "ARCHITECTURE.md's allowed directions differ from ALLOWED in tests/it/architecture.rs"
    );
}
