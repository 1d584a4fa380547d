//! The files that restate the option table, checked against it: the init
//! script's `validate_data` rules, the shipped `dcol.config` and LuCI's
//! pages. Every option of [`OPTIONS`] must be in each, with the same
//! datatype (range, choices) and default; a missing or different one fails
//! here, naming the file and the option.

use std::path::Path;

use super::*;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const INIT: &str = "openwrt-feed/net/dcol/files/dcol.init";
const SHIPPED: &str = "openwrt-feed/net/dcol/files/dcol.config";
const LUCI: &[&str] = &[
    "luci-app-dcol/htdocs/luci-static/resources/view/dcol/settings.js",
    "luci-app-dcol/htdocs/luci-static/resources/view/dcol/overview.js",
];
/// Spellings the parser takes that the LuCI drop-downs need not offer.
const ALIASES: &[&str] = &["warning"];

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `'...'` of `line`, if it has one.
fn quoted(line: &str) -> Option<&str> {
    let a = line.find('\'')?;
    let b = line[a + 1..].find('\'')?;
    Some(&line[a + 1..a + 1 + b])
}

/// The init script's rules: `(section type, name, datatype, default)` from
/// the `TYPE_options()` functions.
fn init_rules(text: &str) -> Vec<(String, String, String, Option<String>)> {
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if let Some(f) = line.strip_suffix("_options() {") {
            section = Some(f.to_owned());
        } else if line.starts_with('}') {
            section = None;
        } else if let (Some(s), Some(rule)) = (&section, quoted(line)) {
            let mut p = rule.splitn(3, ':');
            let (name, dt) = (p.next().unwrap_or(""), p.next().unwrap_or(""));
            let default = p.next().map(str::to_owned);
            out.push((s.clone(), name.to_owned(), dt.to_owned(), default));
        }
    }
    out
}

#[test]
fn init_script_validates_every_option_as_the_table() {
    let rules = init_rules(&read(INIT));
    let mut problems = Vec::new();
    for o in OPTIONS {
        let t = o.section.uci_type();
        let want_dt = if o.list {
            format!("list({})", o.kind.datatype())
        } else {
            o.kind.datatype()
        };
        let want = (want_dt, o.default.map(str::to_owned));
        match rules.iter().find(|r| r.0 == t && r.1 == o.name) {
            None => problems.push(format!(
                "{t}.{}: missing; want '{}:{}{}'",
                o.name,
                o.name,
                want.0,
                want.1.map(|d| format!(":{d}")).unwrap_or_default()
            )),
            Some(r) if (r.2.clone(), r.3.clone()) != want => problems.push(format!(
                "{t}.{}: '{}:{:?}', want '{}:{:?}'",
                o.name, r.2, r.3, want.0, want.1
            )),
            Some(_) => {}
        }
    }
    for r in &rules {
        if Section::of(&r.0)
            .and_then(|s| options::find(s, &r.1))
            .is_none()
        {
            problems.push(format!("{}.{}: not an option of the daemon", r.0, r.1));
        }
    }
    assert!(problems.is_empty(), "{INIT}:\n{}", problems.join("\n"));
}

/// `(section type, name, value, commented out)` of every option line of
/// the shipped file, commented-out examples included.
fn shipped_lines(text: &str) -> Vec<(String, String, String, bool)> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        let commented = line.starts_with('#');
        let w = uci::words(line.trim_start_matches('#')).unwrap_or_default();
        match w.first().map(String::as_str) {
            Some("config") if w.len() >= 2 => section = w[1].clone(),
            Some("option" | "list") if w.len() == 3 => {
                out.push((section.clone(), w[1].clone(), w[2].clone(), commented))
            }
            _ => {}
        }
    }
    out
}

#[test]
fn shipped_config_parses_and_shows_every_option_with_its_default() {
    let text = read(SHIPPED);
    let c = parse(&text, Path::new(SHIPPED)).expect("the shipped file parses");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let lines = shipped_lines(&text);
    let mut problems = Vec::new();
    for o in OPTIONS {
        let t = o.section.uci_type();
        let mine: Vec<_> = lines.iter().filter(|l| l.0 == t && l.1 == o.name).collect();
        if mine.is_empty() {
            problems.push(format!(
                "{t}.{}: missing (at least as a '#' example)",
                o.name
            ));
        }
        for (_, _, v, commented) in mine {
            let mut d = Draft::new(Path::new(SHIPPED));
            if let Err(e) = o.kind.apply(&mut d, v) {
                problems.push(format!("{t}.{} '{v}': {e}", o.name));
            }
            match o.default {
                Some(def) if *commented && def != v => problems.push(format!(
                    "{t}.{}: the example shows '{v}', the default is '{def}'",
                    o.name
                )),
                _ => {}
            }
        }
    }
    for l in &lines {
        if Section::of(&l.0)
            .and_then(|s| options::find(s, &l.1))
            .is_none()
        {
            problems.push(format!("{}.{}: not an option of the daemon", l.0, l.1));
        }
    }
    assert!(problems.is_empty(), "{SHIPPED}:\n{}", problems.join("\n"));
}

/// One form field of a LuCI view.
#[derive(Debug, Default)]
struct Field {
    section: String,
    name: String,
    widget: String,
    datatype: Option<String>,
    placeholder: Option<String>,
    default: Option<String>,
    values: Vec<String>,
    validate: bool,
    required: bool,
}

/// The form fields of a LuCI view, by UCI section type (`s =
/// m.section(...)`, `o = s.option(...)`/`s.taboption(...)` and the `o.*`
/// lines after it; `o.ucisection`/`o.ucioption` redirect a field).
fn luci_fields(text: &str) -> Vec<Field> {
    let names = |sec: &str| Section::ALL.into_iter().find(|s| s.uci_name() == Some(sec));
    let mut out: Vec<Field> = Vec::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        let args = |l: &str| -> Vec<String> {
            l.split('\'')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        if line.starts_with("s = m.section(form.") {
            let a = args(line);
            section = if line.contains("NamedSection") {
                a.get(1)
            } else {
                a.first()
            }
            .cloned()
            .unwrap_or_default();
        } else if line.starts_with("o = s.option(form.") || line.starts_with("o = s.taboption(") {
            let widget = line
                .split("form.")
                .nth(1)
                .and_then(|w| w.split(',').next())
                .unwrap_or("");
            let a = args(line);
            let name = if line.starts_with("o = s.taboption(") {
                a.get(1)
            } else {
                a.first()
            };
            out.push(Field {
                section: section.clone(),
                name: name.cloned().unwrap_or_default(),
                widget: widget.to_owned(),
                ..Field::default()
            });
        } else if let Some(f) = out.last_mut() {
            let v = quoted(line).map(str::to_owned);
            match line.split([' ', '(']).next().unwrap_or("") {
                "o.datatype" => f.datatype = v,
                "o.placeholder" => f.placeholder = v,
                "o.default" => f.default = v,
                "o.value" => f.values.extend(v),
                "o.validate" => f.validate = true,
                "o.rmempty" => f.required = line.contains("false"),
                "o.ucioption" => f.name = v.unwrap_or_default(),
                "o.ucisection" => {
                    let s = v.unwrap_or_default();
                    f.section = names(&s).map(|s| s.uci_type().to_owned()).unwrap_or(s);
                }
                _ => {}
            }
        }
    }
    out
}

/// What is wrong with `f` as the field of `o`.
fn luci_problems(o: &UciOption, f: &Field) -> Vec<String> {
    let mut p = Vec::new();
    let (want_widget, default_in) = match (&o.kind, o.list) {
        (Kind::Bool(_), _) => ("Flag", &f.default),
        (k, _) if k.words().is_some() => ("ListValue", &f.default),
        (_, true) => ("DynamicList", &f.placeholder),
        (_, false) => ("Value", &f.placeholder),
    };
    if f.widget != want_widget {
        p.push(format!("a {} field, want {want_widget}", f.widget));
    }
    // Placeholders of options without a default are examples.
    if default_in.as_deref() != o.default && (o.default.is_some() || want_widget == "Flag") {
        p.push(format!(
            "default/placeholder {default_in:?}, want {:?}",
            o.default
        ));
    }
    match (o.kind.luci_datatype(), &o.kind) {
        (_, Kind::Bool(_)) => {}
        (Some(dt), _) if f.datatype.as_deref() != Some(dt.as_str()) => {
            p.push(format!("datatype {:?}, want '{dt}'", f.datatype))
        }
        (None, Kind::Url(_)) if !f.validate => p.push("no validate function for a URL".into()),
        _ => {}
    }
    if let Some(words) = o.kind.words() {
        let offered = f.values.iter().all(|v| words.contains(&v.as_str()));
        let all = words
            .iter()
            .all(|w| f.values.iter().any(|v| v == w) || ALIASES.contains(w));
        if !(offered && all) {
            p.push(format!("values {:?}, want {words:?}", f.values));
        }
    }
    if o.required && !f.required {
        p.push("required, but not rmempty = false".into());
    }
    p
}

#[test]
fn luci_pages_have_every_option_as_the_table() {
    let fields: Vec<Field> = LUCI.iter().flat_map(|f| luci_fields(&read(f))).collect();
    let mut problems = Vec::new();
    for o in OPTIONS {
        let t = o.section.uci_type();
        let mine: Vec<&Field> = fields
            .iter()
            .filter(|f| f.section == t && f.name == o.name)
            .collect();
        if mine.is_empty() {
            problems.push(format!("{t}.{}: no field", o.name));
        }
        for f in mine {
            problems.extend(
                luci_problems(o, f)
                    .into_iter()
                    .map(|e| format!("{t}.{}: {e}", o.name)),
            );
        }
    }
    for f in &fields {
        if Section::of(&f.section)
            .and_then(|s| options::find(s, &f.name))
            .is_none()
        {
            problems.push(format!(
                "{}.{}: not an option of the daemon",
                f.section, f.name
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}:\n{}",
        LUCI.join(", "),
        problems.join("\n")
    );
}
