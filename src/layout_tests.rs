//! The layout's one rule a compiler does not check: no import cycles
//! between modules. Reads `src/`, builds the graph of which module names
//! which (`crate::` and `super::` paths, `{...}` groups expanded), and fails
//! on any cycle. A module and its own parents or children are not edges
//! (a subsystem's `mod.rs` may re-export its parts); `lib.rs`, `bin/` and
//! test modules (`tests.rs`, `#[cfg(test)] mod` tails) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every module of the library under `src`, by path (`plan::planner`), with its source.
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if prefix.is_empty() && name == "bin" {
                    continue;
                }
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
                continue;
            }
            let Some(stem) = name.strip_suffix(".rs") else { continue };
            if prefix.is_empty() && stem == "lib" || stem == "tests" || stem.ends_with("_tests") {
                continue;
            }
            let mut p = prefix.to_vec();
            if stem != "mod" {
                p.push(stem.to_string());
            }
            out.insert(p.join("::"), std::fs::read_to_string(&path).unwrap());
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

/// The source without comments and without its `#[cfg(test)] mod` tail.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod ")) {
            break;
        }
        let line = line.find("//").map_or(line, |i| &line[..i]);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The paths `text` names after `root::` (`crate` or `super`), each as
/// segments, with `{a, b::c}` groups expanded.
fn paths(text: &str, root: &str) -> Vec<Vec<String>> {
    let needle = format!("{root}::");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(&needle) {
        let at = from + i;
        from = at + needle.len();
        // `crate::` inside another name (`my_crate::`) is not ours.
        if text[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let tokens = tokenize(&text[from..]);
        let mut pos = 0;
        tree(&tokens, &mut pos, &[], &mut out);
    }
    out
}

fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut depth = 0usize;
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => continue,
            c if c.is_alphanumeric() || c == '_' => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if !(d.is_alphanumeric() || d == '_') {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                // Outside a group, a name that does not follow `::` (or
                // `as`) is past the path's end.
                let word = &text[i..end];
                let after_sep = tokens.last().is_none_or(|t: &String| t == "::" || t == "as") || word == "as";
                if depth == 0 && !after_sep {
                    break;
                }
                tokens.push(word.to_string());
            }
            ':' if chars.peek().is_some_and(|&(_, d)| d == ':') => {
                chars.next();
                tokens.push("::".into());
            }
            '{' => {
                depth += 1;
                tokens.push("{".into());
            }
            '}' | ',' | '*' if depth > 0 || c == '*' => {
                if c == '}' {
                    depth -= 1;
                }
                tokens.push(c.to_string());
            }
            _ => break,
        }
        // A path ends at the first token that cannot continue it, outside a group.
        if depth == 0 && tokens.last().is_some_and(|t| t == "}") {
            break;
        }
    }
    tokens
}

/// One use-tree at `pos`: `a::b`, `a::{..}`, `*`, `self`; pushes the full paths.
fn tree(tokens: &[String], pos: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    while let Some(t) = tokens.get(*pos) {
        match t.as_str() {
            "{" => {
                *pos += 1;
                while tokens.get(*pos).is_some_and(|t| t != "}") {
                    tree(tokens, pos, &path, out);
                    if tokens.get(*pos).is_some_and(|t| t == ",") {
                        *pos += 1;
                    }
                }
                *pos += 1;
                return;
            }
            "*" => {
                *pos += 1;
                break;
            }
            "self" => {
                *pos += 1;
                break;
            }
            t if t.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                path.push(t.to_string());
                *pos += 1;
                if tokens.get(*pos).is_some_and(|t| t == "as") {
                    *pos += 2;
                    break;
                }
                if tokens.get(*pos).is_some_and(|t| t == "::") {
                    *pos += 1;
                } else {
                    break;
                }
            }
            _ => break,
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// The longest prefix of `path` that is a module.
fn resolve(path: &[String], known: &BTreeSet<String>) -> Option<String> {
    (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| known.contains(m))
}

/// One is the other, or its parent or child, at segment boundaries.
fn related(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| x == y || x.starts_with(&format!("{y}::"));
    under(a, b) || under(b, a)
}

fn graph(mods: &BTreeMap<String, String>) -> Graph {
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let mut g = Graph::new();
    for (name, text) in mods {
        let text = code(text);
        // `super` of `a::b` (a file `a/b.rs`, or `a/b/mod.rs`) is `a`.
        let parent: Vec<String> = name.split("::").map(str::to_string).collect::<Vec<_>>().split_last().map(|(_, p)| p.to_vec()).unwrap_or_default();
        let mut targets: Vec<Vec<String>> = paths(&text, "crate");
        targets.extend(paths(&text, "super").into_iter().map(|p| parent.iter().cloned().chain(p).collect()));
        let edges = g.entry(name.clone()).or_default();
        for t in targets {
            if let Some(m) = resolve(&t, &known) {
                if !related(name, &m) {
                    edges.insert(m);
                }
            }
        }
    }
    g
}

/// A cycle in `g` (its modules in order, the first repeated at the end), if any.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(g: &'a Graph, n: &'a str, state: &mut BTreeMap<&'a str, u8>, stack: &mut Vec<&'a str>) -> Option<Vec<String>> {
        state.insert(n, 1);
        stack.push(n);
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| *s == m).unwrap();
                    let mut c: Vec<String> = stack[from..].iter().map(|s| s.to_string()).collect();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(g, m, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    g.keys().find_map(|n| if state.contains_key(n.as_str()) { None } else { visit(g, n, &mut state, &mut Vec::new()) })
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mods = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(mods.len() > 50, "found only {} modules: is src/ where it was?", mods.len());
    assert!(mods.contains_key("plan::planner") && mods.contains_key("api"), "{:?}", mods.keys());
    let g = graph(&mods);
    assert!(g.values().map(BTreeSet::len).sum::<usize>() > 100, "too few imports seen: {g:?}");
    if let Some(c) = cycle(&g) {
        panic!("import cycle: {} (move what both need below both, or pass it in)", c.join(" -> "));
    }
}

#[test]
fn the_checker_sees_paths_groups_and_cycles() {
    let text = "use crate::a::{b::{self, C}, d, e::*};\nlet x = crate::f::g(1); // crate::h\nuse my_crate::z;\n#[cfg(test)]\nmod tests { use crate::t; }";
    let p = paths(&code(text), "crate");
    let joined: Vec<String> = p.iter().map(|s| s.join("::")).collect();
    assert_eq!(joined, ["a::b", "a::b::C", "a::d", "a::e", "f::g"]);
    assert_eq!(paths("use super::{x, y::Z};", "super").len(), 2);
    let known: BTreeSet<String> = ["a", "a::b", "f"].iter().map(|s| s.to_string()).collect();
    assert_eq!(resolve(&p[1], &known).as_deref(), Some("a::b"));
    assert_eq!(resolve(&p[4], &known).as_deref(), Some("f"));
    assert!(related("a", "a::b") && !related("a", "ab"));
    let mut g = Graph::new();
    let edge = |g: &mut Graph, a: &str, b: &str| g.entry(a.into()).or_default().insert(b.into());
    edge(&mut g, "service", "eval::run");
    edge(&mut g, "eval::run", "plan::planner");
    assert_eq!(cycle(&g), None);
    edge(&mut g, "plan::planner", "service");
    assert_eq!(cycle(&g).unwrap(), ["eval::run", "plan::planner", "service", "eval::run"]);
}
