//! The house rules of `gateway/src`, checked on the source: every top-level module imports
//! only modules below it in [`ORDER`] (so no import runs back up and there is no import
//! circle), `core` imports nothing else of the crate, and no source file passes 800 lines.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first: data flows from ingress (`server`) down through the call pipeline to the
/// plugin host, providers and state; `core` is the leaf.
const ORDER: &[&str] = &[
    "core",
    "net",
    "wire",
    "chain",
    "registry",
    "metrics",
    "audit",
    "plugins",
    "limits",
    "providers",
    "approvals",
    "mcp",
    "app",
    "call",
    "admin",
    "console",
    "server",
    "cli",
    "demo",
];

/// Files that are not part of the layering: the crate root, the binary, test-only modules.
const EXEMPT: &[&str] = &["lib.rs", "main.rs", "error_table.rs"];

const MAX_LINES: usize = 800;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// The crate modules a file names (`crate::x`), outside comments and its `#[cfg(test)]` tail.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let mut rest = t;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn no_import_runs_back_up_and_files_stay_small() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let lines = text.lines().count();
        if lines > MAX_LINES {
            problems.push(format!(
                "{} has {lines} lines (max {MAX_LINES})",
                f.display()
            ));
        }
        if f.parent() == Some(src.as_path()) && EXEMPT.contains(&name.as_str()) {
            continue;
        }
        let module = module_of(&src, f);
        let Some(mine) = rank(&module) else {
            problems.push(format!(
                "{}: module `{module}` is not in ORDER",
                f.display()
            ));
            continue;
        };
        for used in imports(&text) {
            if used == module {
                continue;
            }
            match rank(&used) {
                Some(r) if r < mine => {}
                Some(_) => problems.push(format!(
                    "{}: `{module}` imports `crate::{used}`, which is not below it",
                    f.display()
                )),
                None => problems.push(format!(
                    "{}: `crate::{used}` is not a layered module",
                    f.display()
                )),
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}
