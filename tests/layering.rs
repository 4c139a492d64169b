//! The crate's layering, read from its own source: every file under `src/` is a node, every
//! `crate::`/`super::`/`self::` path (in `use` trees and inline, outside comments and strings)
//! an edge to the file that defines the item (following `pub use` re-exports; a `pub use` itself
//! is not an edge). The graph must have no circle, and the FFI layers (`src/pjrt/`,
//! `src/refine/`, `src/lapack/`) must import nothing from validation, serving, compilation or the
//! engine. `unsafe` code may appear only in the files listed in [`UNSAFE_ALLOWED`].
//!
//! `cargo test --test layering -- --nocapture` prints the module graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path of a file: `src/compile/mod.rs` -> `["compile"]`, `src/lib.rs` -> `[]`.
type Module = Vec<String>;

/// Top-level modules that are FFI layers, and the modules they must not reach.
const FFI_LAYERS: &[&str] = &["pjrt", "refine", "lapack"];
const ABOVE_FFI: &[&str] = &["validate", "server", "compile", "engine", "error"];

/// Files that may hold `unsafe` code besides the FFI layers, and why.
const UNSAFE_ALLOWED: &[(&str, &str)] = &[
    (
        "compile::sandbox",
        "the jail: prctl, setrlimit, seccomp, fork/exec",
    ),
    (
        "compile",
        "TrustedExecutable: loading an executable is code execution by contract",
    ),
    ("validate::scan", "the AVX2 value-scan kernels"),
    (
        "exec::shm",
        "the execution sandbox's shared memory: memfd, seals, mmap; bytes are copied, never referenced",
    ),
    (
        "exec::worker",
        "the execution worker deserializes the executable its parent sends: code execution by contract",
    ),
];

struct Crate {
    files: BTreeMap<Module, PathBuf>,
    code: BTreeMap<Module, String>,
    /// Per file: `pub use` aliases -> absolute target path.
    reexports: BTreeMap<Module, BTreeMap<String, Vec<String>>>,
}

fn module_of(root: &Path, path: &Path) -> Module {
    let rel = path.strip_prefix(root).unwrap().with_extension("");
    let mut m: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib")) {
        m.pop();
    }
    m
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source with comments removed and string and char literals emptied (kept as `""`).
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"..", r#".."#, br"..".
        if (b[i] == b'r' || b[i..].starts_with(b"br")) && (i == 0 || !ident(b[i - 1])) {
            let mut j = i + if b[i] == b'b' { 2 } else { 1 };
            let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
            j += hashes;
            if b.get(j) == Some(&b'"') {
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat_n(b'#', hashes));
                let body = j + 1;
                let end = b[body..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |p| body + p + close.len());
                out.push_str("\"\"");
                i = end;
                continue;
            }
        }
        if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i = j + 1;
            continue;
        }
        if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime.
            let rest = &b[i + 1..];
            let len = if rest.first() == Some(&b'\\') {
                rest.iter().skip(1).position(|&c| c == b'\'').map(|p| p + 2)
            } else {
                let ch = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(ch) == Some(&b'\'')).then_some(ch)
            };
            if let Some(n) = len {
                out.push_str("' '");
                i += n + 2;
                continue;
            }
        }
        let ch = src[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Parses a `use` tree starting at `pos` into `(path, alias)` leaves.
fn use_tree(s: &str, pos: usize) -> Vec<(Vec<String>, String)> {
    fn tree(
        s: &[u8],
        mut pos: usize,
        prefix: &[String],
        out: &mut Vec<(Vec<String>, String)>,
    ) -> usize {
        let skip = |p: &mut usize| {
            while *p < s.len() && (s[*p].is_ascii_whitespace() || s[*p] == b',') {
                *p += 1;
            }
        };
        skip(&mut pos);
        if s.get(pos) == Some(&b'{') {
            pos += 1;
            loop {
                skip(&mut pos);
                if pos >= s.len() || s[pos] == b'}' {
                    return pos + 1;
                }
                pos = tree(s, pos, prefix, out);
            }
        }
        let start = pos;
        while pos < s.len() && (s[pos].is_ascii_alphanumeric() || s[pos] == b'_' || s[pos] == b'*')
        {
            pos += 1;
        }
        let seg = String::from_utf8_lossy(&s[start..pos]).into_owned();
        if seg.is_empty() {
            return pos + 1;
        }
        while pos < s.len() && s[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let mut path = prefix.to_vec();
        path.push(seg.clone());
        if s[pos..].starts_with(b"::") {
            return tree(s, pos + 2, &path, out);
        }
        let mut alias = seg;
        if s[pos..].starts_with(b"as ") {
            let a = pos + 3;
            let e = a + s[a..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .unwrap_or(0);
            alias = String::from_utf8_lossy(&s[a..e]).into_owned();
            pos = e;
        }
        out.push((path, alias));
        pos
    }
    let mut out = Vec::new();
    tree(s.as_bytes(), pos, &[], &mut out);
    out
}

/// Byte offsets of every `use` statement: `(start of the tree, is it a pub use)`.
fn use_statements(s: &str) -> Vec<(usize, usize, bool)> {
    let mut out = Vec::new();
    let mut line_start = 0;
    for line in s.split_inclusive('\n') {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        let (is_pub, rest) = if let Some(r) = t.strip_prefix("pub ") {
            (true, r)
        } else if t.starts_with("pub(") {
            let close = t.find(')').unwrap_or(0);
            (true, t[close + 1..].trim_start())
        } else {
            (false, t)
        };
        if let Some(r) = rest.strip_prefix("use ") {
            let tree = line_start + indent + (t.len() - r.len());
            out.push((line_start + indent, tree, is_pub));
        }
        line_start += line.len();
    }
    out
}

/// Inline `mod name { .. }` blocks: (start, end, name).
fn inline_mods(s: &str) -> Vec<(usize, usize, String)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(p) = s[from..].find("mod ") {
        let at = from + p;
        from = at + 4;
        if at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_') {
            continue;
        }
        let name_end = from
            + s[from..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(0);
        let name = s[from..name_end].to_string();
        let rest = s[name_end..].trim_start();
        if name.is_empty() || !rest.starts_with('{') {
            continue;
        }
        let open = s.len() - rest.len();
        let mut depth = 0;
        let mut end = open;
        for (i, &c) in b.iter().enumerate().skip(open) {
            if c == b'{' {
                depth += 1;
            } else if c == b'}' {
                depth -= 1;
                if depth == 0 {
                    end = i;
                    break;
                }
            }
        }
        out.push((at, end, name));
    }
    out
}

impl Crate {
    fn read() -> Crate {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut paths = Vec::new();
        walk(&root, &mut paths);
        let mut files = BTreeMap::new();
        let mut code = BTreeMap::new();
        for p in paths {
            if p == root.join("main.rs") {
                continue; // the binary: a client of the library, not part of its graph
            }
            let m = module_of(&root, &p);
            code.insert(m.clone(), strip(&std::fs::read_to_string(&p).unwrap()));
            files.insert(m, p);
        }
        let mut c = Crate {
            files,
            code,
            reexports: BTreeMap::new(),
        };
        for (m, s) in &c.code {
            let mut ex = BTreeMap::new();
            for (_, tree, is_pub) in use_statements(s) {
                if !is_pub {
                    continue;
                }
                for (path, alias) in use_tree(s, tree) {
                    if let Some(abs) = c.absolute(m, &[], &path) {
                        ex.insert(alias, abs);
                    }
                }
            }
            c.reexports.insert(m.clone(), ex);
        }
        c
    }

    /// The absolute path (from the crate root) of `path` written in file `m` inside inline
    /// modules `inner`; `None` for paths into other crates.
    fn absolute(&self, m: &Module, inner: &[String], path: &[String]) -> Option<Vec<String>> {
        let mut base: Vec<String> = m.iter().chain(inner).cloned().collect();
        let mut p = path;
        match p.first().map(String::as_str) {
            Some("crate") => return Some(p[1..].to_vec()),
            Some("self") => p = &p[1..],
            Some("super") => {
                while p.first().map(String::as_str) == Some("super") {
                    base.pop();
                    p = &p[1..];
                }
            }
            Some(first) => {
                // A child module named without `self::` (`use pool::Pool` in compile/mod.rs).
                let mut child = m.clone();
                child.push(first.to_string());
                if !inner.is_empty() || !self.files.contains_key(&child) {
                    return None;
                }
            }
            None => return None,
        }
        Some(base.into_iter().chain(p.iter().cloned()).collect())
    }

    /// The file that defines the item at `path` (following re-exports).
    fn resolve(&self, path: &[String], depth: usize) -> Module {
        let mut module: Module = Vec::new();
        for (i, seg) in path.iter().enumerate() {
            let mut child = module.clone();
            child.push(seg.clone());
            if self.files.contains_key(&child) {
                module = child;
                continue;
            }
            if depth < 16 {
                if let Some(target) = self.reexports.get(&module).and_then(|e| e.get(seg)) {
                    let mut t = target.clone();
                    t.extend(path[i + 1..].iter().cloned());
                    return self.resolve(&t, depth + 1);
                }
            }
            return module;
        }
        module
    }

    /// Edges: file -> (file it uses -> the paths that make the edge).
    fn edges(&self) -> BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>> {
        let mut edges: BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>> = BTreeMap::new();
        for (m, s) in &self.code {
            let mods = inline_mods(s);
            let inner_at = |pos: usize| -> Vec<String> {
                mods.iter()
                    .filter(|(a, b, _)| *a <= pos && pos <= *b)
                    .map(|(_, _, n)| n.clone())
                    .collect()
            };
            let mut paths: Vec<(Vec<String>, Vec<String>)> = Vec::new();
            let mut skip: Vec<(usize, usize)> = Vec::new();
            for (start, tree, is_pub) in use_statements(s) {
                let end = start + s[start..].find(';').unwrap_or(0);
                skip.push((start, end));
                if is_pub {
                    continue; // a re-export: resolution follows it
                }
                for (path, _) in use_tree(s, tree) {
                    if let Some(a) = self.absolute(m, &inner_at(start), &path) {
                        paths.push((a, path));
                    }
                }
            }
            // Inline paths: `crate::a::b`, `super::x` outside `use` statements.
            let b = s.as_bytes();
            for kw in ["crate::", "super::"] {
                let mut from = 0;
                while let Some(p) = s[from..].find(kw) {
                    let at = from + p;
                    from = at + kw.len();
                    let prev = at.checked_sub(1).map(|i| b[i]);
                    if prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
                        || skip.iter().any(|(a, e)| *a <= at && at <= *e)
                    {
                        continue;
                    }
                    let mut end = at;
                    while end < b.len()
                        && (b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b':')
                    {
                        end += 1;
                    }
                    let path: Vec<String> = s[at..end]
                        .split("::")
                        .filter(|x| !x.is_empty())
                        .map(str::to_string)
                        .collect();
                    if let Some(a) = self.absolute(m, &inner_at(at), &path) {
                        paths.push((a, path));
                    }
                }
            }
            for (abs, written) in paths {
                let target = self.resolve(&abs, 0);
                if &target != m {
                    edges
                        .entry(m.clone())
                        .or_default()
                        .entry(target)
                        .or_default()
                        .insert(written.join("::"));
                }
            }
        }
        edges
    }
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Strongly connected components with more than one file (Tarjan).
fn circles(
    nodes: &[Module],
    edges: &BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>,
) -> Vec<Vec<Module>> {
    struct T<'a> {
        edges: &'a BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        on: BTreeSet<Module>,
        next: usize,
        out: Vec<Vec<Module>>,
    }
    fn visit(t: &mut T<'_>, v: &Module) {
        t.index.insert(v.clone(), t.next);
        t.low.insert(v.clone(), t.next);
        t.next += 1;
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        let succ: Vec<Module> = t
            .edges
            .get(v)
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default();
        for w in succ {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let l = t.low[v].min(t.low[&w]);
                t.low.insert(v.clone(), l);
            } else if t.on.contains(&w) {
                let l = t.low[v].min(t.index[&w]);
                t.low.insert(v.clone(), l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for n in nodes {
        if !t.index.contains_key(n) {
            visit(&mut t, n);
        }
    }
    t.out
}

#[test]
fn no_import_circles_and_ffi_layers_stay_low() {
    let c = Crate::read();
    let edges = c.edges();
    let nodes: Vec<Module> = c.files.keys().cloned().collect();
    println!("module graph (file -> files it uses):");
    for (from, to) in &edges {
        let to: Vec<String> = to.keys().map(name).collect();
        println!("  {} -> {}", name(from), to.join(", "));
    }
    let mut problems = Vec::new();
    for comp in circles(&nodes, &edges) {
        let mut why = Vec::new();
        for a in &comp {
            for b in &comp {
                if let Some(paths) = edges.get(a).and_then(|e| e.get(b)) {
                    let p: Vec<&str> = paths.iter().map(String::as_str).collect();
                    why.push(format!("{} -> {} ({})", name(a), name(b), p.join(", ")));
                }
            }
        }
        problems.push(format!("import circle: {}", why.join("; ")));
    }
    for (from, to) in &edges {
        let Some(layer) = from.first().filter(|t| FFI_LAYERS.contains(&t.as_str())) else {
            continue;
        };
        for (target, paths) in to {
            if target
                .first()
                .is_some_and(|t| ABOVE_FFI.contains(&t.as_str()))
            {
                let p: Vec<&str> = paths.iter().map(String::as_str).collect();
                problems.push(format!(
                    "FFI layer {layer}: {} uses {} ({})",
                    name(from),
                    name(target),
                    p.join(", ")
                ));
            }
        }
    }
    for (m, s) in &c.code {
        let is_ffi = m.first().is_some_and(|t| FFI_LAYERS.contains(&t.as_str()));
        let allowed = UNSAFE_ALLOWED.iter().any(|(f, _)| *f == name(m));
        let has_unsafe = ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"]
            .iter()
            .any(|k| s.contains(k));
        if has_unsafe && !is_ffi && !allowed {
            problems.push(format!(
                "{} has unsafe code outside the FFI layers ({})",
                c.files[m].display(),
                FFI_LAYERS.join(", ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checker itself sees what it must: a circle through a re-export, a path in a `use` tree,
/// an inline path, and nothing inside comments, strings or `mod tests { use super::* }`.
#[test]
fn the_checker_sees_circles_and_ignores_comments_and_strings() {
    let src = "// use crate::b::X;\nlet s = \"crate::b::Y\";\nuse crate::{c::{Z, W as V}, d};\nfn f() { crate::e::g(); }\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n";
    let s = strip(src);
    assert!(!s.contains("crate::b"), "{s}");
    let stmts = use_statements(&s);
    assert_eq!(stmts.len(), 2, "{stmts:?}");
    let tree = use_tree(&s, stmts[0].1);
    let paths: Vec<String> = tree
        .iter()
        .map(|(p, a)| format!("{}={a}", p.join("::")))
        .collect();
    assert_eq!(paths, ["crate::c::Z=Z", "crate::c::W=V", "crate::d=d"]);
    assert_eq!(inline_mods(&s).len(), 1);
    // A two-file circle is found; removing one edge breaks it.
    let a: Module = vec!["a".into()];
    let b: Module = vec!["b".into()];
    let mut edges: BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>> = BTreeMap::new();
    edges
        .entry(a.clone())
        .or_default()
        .insert(b.clone(), BTreeSet::new());
    edges
        .entry(b.clone())
        .or_default()
        .insert(a.clone(), BTreeSet::new());
    assert_eq!(circles(&[a.clone(), b.clone()], &edges).len(), 1);
    edges.remove(&b);
    assert!(circles(&[a, b], &edges).is_empty());
}
