//! The shape of `dcol/src`, held against the code (issue 15, STYLE.md 17):
//! no file over 1,000 lines, no function over 80 lines outside `#[cfg(test)]`
//! code, and no `Result<_, String>` or `type Err = String` (errors are typed
//! enums that keep their cause).
//!
//! A small reader blanks comments, string and char literals, then matches
//! braces; it needs no root and no parser crate.

use std::fs;

use common::{rust_files, src};

mod common;

/// Longest file, in lines.
const MAX_FILE_LINES: usize = 1000;
/// Longest function outside test code, in lines from `fn` to its `}`.
const MAX_FN_LINES: usize = 80;

/// Files allowed over the limit (none today).
const ALLOW_LONG_FILES: &[&str] = &[];
/// Functions allowed over the limit, (file, function) (none today).
const ALLOW_LONG_FNS: &[(&str, &str)] = &[];
/// Files allowed string errors (none today).
const ALLOW_STRING_ERRORS: &[&str] = &[];

/// Each file as (path relative to `src`, text).
fn sources() -> Vec<(String, String)> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (rel, text)
        })
        .collect()
}

/// `text` with comments, string literals and char literals replaced by
/// spaces (newlines kept), so braces and keywords left are code.
fn blank(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let wipe = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let ident_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |n| i + n);
                wipe(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (mut depth, mut j) = (1, i + 2);
                while j < b.len() && depth > 0 {
                    if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                wipe(&mut out, i, j);
                i = j;
            }
            b'r' if !ident_before && matches!(b.get(i + 1), Some(b'"') | Some(b'#')) => {
                // Raw string r"..." or r#"..."#; `r#ident` is not one.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                let end = j + close.len();
                wipe(&mut out, i, end);
                i = end;
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                wipe(&mut out, i, j + 1);
                i = j + 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}', '{'); otherwise a lifetime.
                if b.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 2;
                    while j < b.len() && b[j] != b'\'' {
                        j += 1;
                    }
                    wipe(&mut out, i, j + 1);
                    i = j + 1;
                } else if let Some(n) = text[i + 1..].chars().next() {
                    let after = i + 1 + n.len_utf8();
                    if b.get(after) == Some(&b'\'') {
                        wipe(&mut out, i, after + 1);
                        i = after + 1;
                    } else {
                        i += 1;
                    }
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// The index just past the `}` that closes the `{` at `open`.
fn close_of(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (k, &c) in code.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// The end of the item starting at or after `from`: past its body's `}`, or
/// past its `;` when it has no body.
fn item_end(code: &[u8], from: usize) -> usize {
    match code[from..].iter().position(|&c| c == b'{' || c == b';') {
        Some(n) if code[from + n] == b'{' => close_of(code, from + n),
        Some(n) => from + n + 1,
        None => code.len(),
    }
}

/// Files that are test modules: `#[cfg(test)] mod name;` in `parent`
/// (relative to `src`) names `name.rs` or `name/mod.rs` next to it, or under
/// its own directory for a `foo.rs` parent.
fn test_module_files(parent: &str, code: &[u8]) -> Vec<String> {
    let dir = match parent.rsplit_once('/') {
        Some((d, "mod.rs" | "lib.rs" | "main.rs")) => format!("{d}/"),
        Some((d, f)) => format!("{d}/{}/", f.trim_end_matches(".rs")),
        None if matches!(parent, "lib.rs" | "main.rs") => String::new(),
        None => format!("{}/", parent.trim_end_matches(".rs")),
    };
    let mut out = Vec::new();
    for (a, b) in test_ranges(code) {
        let item = String::from_utf8_lossy(&code[a..b]);
        let words: Vec<&str> = item["#[cfg(test)]".len()..].split_whitespace().collect();
        let decl = match words.as_slice() {
            ["mod", name] | ["pub", "mod", name] | ["pub(crate)", "mod", name] => name,
            _ => continue,
        };
        if let Some(name) = decl.strip_suffix(';') {
            out.push(format!("{dir}{name}.rs"));
            out.push(format!("{dir}{name}/mod.rs"));
        }
    }
    out
}

/// Byte ranges of items under `#[cfg(test)]`.
fn test_ranges(code: &[u8]) -> Vec<(usize, usize)> {
    let needle = b"#[cfg(test)]";
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(n) = code[i..].windows(needle.len()).position(|w| w == needle) {
        let at = i + n;
        let end = item_end(code, at + needle.len());
        out.push((at, end));
        i = end;
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn line_of(code: &[u8], at: usize) -> usize {
    code[..at].iter().filter(|&&c| c == b'\n').count() + 1
}

/// Functions outside test code as (name, first line, lines).
fn functions(code: &[u8]) -> Vec<(String, usize, usize)> {
    let tests = test_ranges(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 < code.len() {
        let keyword = &code[i..i + 2] == b"fn"
            && (i == 0 || !is_ident(code[i - 1]))
            && code[i + 2].is_ascii_whitespace();
        if !keyword || tests.iter().any(|&(a, b)| (a..b).contains(&i)) {
            i += 1;
            continue;
        }
        let name_at = i
            + 2
            + code[i + 2..]
                .iter()
                .position(|c| !c.is_ascii_whitespace())
                .unwrap_or(0);
        let name_len = code[name_at..]
            .iter()
            .position(|&c| !is_ident(c))
            .unwrap_or(0);
        let name = String::from_utf8_lossy(&code[name_at..name_at + name_len]).into_owned();
        let end = item_end(code, name_at);
        if code[..end].last() == Some(&b'}') {
            let first = line_of(code, i);
            out.push((name, first, line_of(code, end - 1) - first + 1));
        }
        i = name_at;
    }
    out
}

/// The top-level arguments of the generic list opening at `open` (`<`).
fn generic_args(code: &[u8], open: usize) -> Vec<String> {
    let (mut depth, mut args, mut cur) = (1i32, Vec::new(), Vec::new());
    for k in open + 1..code.len() {
        let c = code[k];
        match c {
            b'<' | b'(' | b'[' => depth += 1,
            b'>' if code[k - 1] == b'-' => {}
            b'>' | b')' | b']' => depth -= 1,
            _ => {}
        }
        if depth == 0 || (depth == 1 && c == b',') {
            args.push(String::from_utf8_lossy(&cur).trim().to_string());
            cur.clear();
            if depth == 0 {
                break;
            }
        } else {
            cur.push(c);
        }
    }
    args
}

/// Places that return `String` as an error: (line, what).
fn string_errors(code: &[u8]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let text = String::from_utf8_lossy(code);
    for (at, _) in text.match_indices("Result<") {
        if at > 0 && is_ident(code[at - 1]) && !text[..at].ends_with("::") {
            continue;
        }
        let args = generic_args(code, at + "Result".len());
        if args.len() == 2 && args[1] == "String" {
            out.push((line_of(code, at), format!("Result<{}, String>", args[0])));
        }
    }
    for (at, _) in text.match_indices("type Err") {
        let rest = text[at + "type Err".len()..].trim_start();
        if let Some(v) = rest.strip_prefix('=') {
            if v.trim_start().starts_with("String") {
                out.push((line_of(code, at), "type Err = String".into()));
            }
        }
    }
    out
}

#[test]
fn reader_skips_comments_strings_and_tests() {
    let code = blank(
        "fn a() {\n  let s = \"}{\"; // }\n  let c = '{'; let r = r#\"}\"#;\n  /* } */ x::<'static>();\n}\n\
         #[cfg(test)]\nmod tests {\n fn b() {\n }\n}\nfn e() -> Result<Vec<u8>, String> { todo!() }\n",
    );
    let fns = functions(&code);
    assert_eq!(fns, vec![("a".into(), 1, 5), ("e".into(), 11, 1)]);
    let errs = string_errors(&code);
    assert_eq!(errs, vec![(11, "Result<Vec<u8>, String>".into())]);
    assert!(string_errors(&blank(
        "fn f() -> io::Result<String> {}\ntype R = Result<String, E>;"
    ))
    .is_empty());
    let decl = blank("#[cfg(test)]\nmod tests;\n#[cfg(test)]\nmod other {}\n");
    assert_eq!(
        test_module_files("a/b.rs", &decl),
        ["a/b/tests.rs", "a/b/tests/mod.rs"]
    );
    assert_eq!(
        test_module_files("a/mod.rs", &decl),
        ["a/tests.rs", "a/tests/mod.rs"]
    );
}

#[test]
fn no_file_over_1000_lines() {
    let mut bad = Vec::new();
    for (rel, text) in sources() {
        let n = text.lines().count();
        if n > MAX_FILE_LINES && !ALLOW_LONG_FILES.contains(&rel.as_str()) {
            bad.push(format!("dcol/src/{rel}: {n} lines"));
        }
    }
    assert!(
        bad.is_empty(),
        "files over {MAX_FILE_LINES} lines:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_function_over_80_lines() {
    let files = sources();
    let tests: Vec<String> = files
        .iter()
        .flat_map(|(rel, text)| test_module_files(rel, &blank(text)))
        .collect();
    let mut bad = Vec::new();
    for (rel, text) in files {
        if tests.contains(&rel) {
            continue;
        }
        for (name, line, n) in functions(&blank(&text)) {
            if n > MAX_FN_LINES && !ALLOW_LONG_FNS.contains(&(rel.as_str(), name.as_str())) {
                bad.push(format!("dcol/src/{rel}:{line}: fn {name} is {n} lines"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_string_errors() {
    let mut bad = Vec::new();
    for (rel, text) in sources() {
        if ALLOW_STRING_ERRORS.iter().any(|p| rel.starts_with(p)) {
            continue;
        }
        for (line, what) in string_errors(&blank(&text)) {
            bad.push(format!("dcol/src/{rel}:{line}: {what}"));
        }
    }
    assert!(
        bad.is_empty(),
        "errors as text (use a thiserror enum):\n{}",
        bad.join("\n")
    );
}
