//! The layers of `dcol`, held against the code (issue 15): every module of
//! the library sits on one floor and imports only from its own floor or
//! below; the lower three floors touch no system interface (no `libc`, `nix`,
//! `neli` or `rtnetlink`, nothing of `crate::sys`), so their decisions are
//! tested on virtual time without root.
//!
//! | floor | modules | what they are |
//! |---|---|---|
//! | 0 | `mptcp`, `types`, `trust`, `http`, `special`, `routes`, `proto`, `loglimit`, `testutil` | vocabulary: types, wire formats, tables |
//! | 1 | `client`, `waypoint`, `proxy`, `convert` | pure decisions (state machines on virtual time) |
//! | 2 | `sys` | the kernel: netlink, nftables, sockets, relay |
//! | 3 | `config`, `directory`, `traversal`, `control`, `member` | the UCI parser (its value types are `types`, below), services with their own threads or sockets |
//! | 4 | `daemon` | the role drivers and the loop |
//!
//! A new module gets a floor here, or this test fails.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::{rust_files, src};

mod common;

const FLOORS: &[(&str, u8)] = &[
    ("mptcp", 0),
    ("types", 0),
    ("trust", 0),
    ("http", 0),
    ("special", 0),
    ("routes", 0),
    ("proto", 0),
    ("testutil", 0),
    ("loglimit", 0),
    ("client", 1),
    ("waypoint", 1),
    ("proxy", 1),
    ("convert", 1),
    ("sys", 2),
    ("config", 3),
    ("directory", 3),
    ("traversal", 3),
    ("control", 3),
    ("member", 3),
    ("daemon", 4),
];

/// The highest floor that touches no system interface.
const PURE: u8 = 1;

/// System crates the pure floors must not name.
const SYSTEM_CRATES: &[&str] = &["libc", "nix", "neli", "rtnetlink", "netlink_packet_route"];

fn floor(module: &str) -> Option<u8> {
    FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
}

/// The top-level module a file under src/ belongs to (`None` for lib.rs and
/// main.rs, which only declare or use the library).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The code of `text` without comments (line comments, doc comments, block
/// comments) and without string literals, so that doc links and messages do
/// not count as imports.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('"', '\n'); lifetimes ('a) have no closing quote.
            let close = text[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            i = close;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules named after `crate::` in `code`, with the braces of
/// `use crate::{a, b::c}` opened.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && code.as_bytes()[at - 1].is_ascii_alphanumeric() {
            continue; // e.g. `dcol_crate::`
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        out.insert(ident_at(&group[i..]).to_owned());
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident_at(rest).to_owned());
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// Whether `code` names `krate` as a path root (`libc::`, `use nix::`),
/// not as part of a longer name (`unix::`).
fn names_crate(code: &str, krate: &str) -> bool {
    code.match_indices(&format!("{krate}::")).any(|(at, _)| {
        at == 0 || {
            let p = code.as_bytes()[at - 1];
            !(p.is_ascii_alphanumeric() || p == b'_' || p == b':')
        }
    })
}

fn files() -> Vec<(PathBuf, String, String)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|f| {
            let m = module_of(&f)?;
            let code = code_only(&fs::read_to_string(&f).unwrap());
            Some((f, m, code))
        })
        .collect()
}

#[test]
fn every_module_has_a_floor() {
    let unknown: Vec<String> = files()
        .into_iter()
        .filter(|(_, m, _)| floor(m).is_none())
        .map(|(f, m, _)| format!("{m} ({})", f.display()))
        .collect();
    assert!(
        unknown.is_empty(),
        "modules without a floor in tests/layers.rs: {unknown:?}"
    );
}

#[test]
fn modules_import_only_from_their_floor_or_below() {
    let mut wrong = Vec::new();
    for (f, m, code) in files() {
        let Some(own) = floor(&m) else { continue };
        for r in crate_refs(&code) {
            match floor(&r) {
                Some(theirs) if theirs > own => wrong.push(format!(
                    "{} (floor {own}) imports crate::{r} (floor {theirs})",
                    f.strip_prefix(src()).unwrap().display()
                )),
                Some(_) => {}
                None => wrong.push(format!(
                    "{} names crate::{r}, which has no floor",
                    f.strip_prefix(src()).unwrap().display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports up the floors:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn pure_floors_touch_no_system_interface() {
    let mut wrong = Vec::new();
    for (f, m, code) in files() {
        if floor(&m).is_none_or(|fl| fl > PURE) {
            continue;
        }
        for k in SYSTEM_CRATES {
            if names_crate(&code, k) {
                wrong.push(format!(
                    "{} names {k}::",
                    f.strip_prefix(src()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "system crates in the pure floors:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_reader_sees_what_it_should() {
    let code = code_only(
        "//! [`crate::sys::lan`]\nuse crate::{config::Cidr, proto::{self, Msg}};\nlet s = \"crate::daemon\";\nuse std::os::unix::fs;\nlet x = crate::routes::Routes::default();\n",
    );
    let refs: Vec<String> = crate_refs(&code).into_iter().collect();
    assert_eq!(refs, ["config", "proto", "routes"]);
    assert!(!names_crate(&code, "nix"));
    assert!(names_crate("let r = nix::unistd::getpid();", "nix"));
    assert!(names_crate("use libc::c_int;", "libc"));
}
