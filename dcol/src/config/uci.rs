//! UCI syntax: lines into sections of `option`/`list` items. Knows nothing
//! of dcol's options (that is [`super::options`]); rejects what is not UCI
//! with the line and a [`SyntaxError`].

use std::path::Path;

use super::error::{ConfigError, SyntaxError};

/// One `option`/`list` line.
pub(super) struct Item {
    /// 1-based line.
    pub line: usize,
    /// The option's name.
    pub name: String,
    /// Its value, unquoted.
    pub value: String,
    /// `list` rather than `option`.
    pub list: bool,
}

/// A `config TYPE [NAME]` line and its items.
pub(super) struct Section {
    /// 1-based line of `config`.
    pub line: usize,
    /// The type.
    pub kind: String,
    /// The items, in file order.
    pub items: Vec<Item>,
}

/// Splits a UCI line into words, honouring quotes and `#` comments.
pub(super) fn words(line: &str) -> Result<Vec<String>, SyntaxError> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        if c == '#' {
            break;
        }
        let mut w = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            match c {
                '\'' => loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => w.push(x),
                        None => return Err(SyntaxError::SingleQuote),
                    }
                },
                '"' => loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.push(chars.next().ok_or(SyntaxError::DoubleQuote)?),
                        Some(x) => w.push(x),
                        None => return Err(SyntaxError::DoubleQuote),
                    }
                },
                '\\' => w.push(chars.next().ok_or(SyntaxError::Backslash)?),
                x => w.push(x),
            }
        }
        out.push(w);
    }
    Ok(out)
}

/// The sections of `text` (`file` is only used in errors).
pub(super) fn sections(text: &str, file: &Path) -> Result<Vec<Section>, ConfigError> {
    let err = |line: usize, option: Option<String>, what: SyntaxError| ConfigError::Syntax {
        file: file.to_owned(),
        line,
        option,
        what,
    };
    let mut out: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let w = words(raw).map_err(|e| err(n, None, e))?;
        let Some(first) = w.first() else { continue };
        match first.as_str() {
            "config" => {
                let kind = w
                    .get(1)
                    .ok_or_else(|| err(n, None, SyntaxError::NoSectionType))?;
                if w.len() > 3 {
                    return Err(err(n, None, SyntaxError::ConfigWords));
                }
                out.push(Section {
                    line: n,
                    kind: kind.clone(),
                    items: Vec::new(),
                });
            }
            "option" | "list" => {
                let keyword = if first == "list" { "list" } else { "option" };
                let sec = out
                    .last_mut()
                    .ok_or_else(|| err(n, None, SyntaxError::OutsideSection(keyword)))?;
                let [_, name, value] = <[String; 3]>::try_from(w.clone())
                    .map_err(|_| err(n, w.get(1).cloned(), SyntaxError::ItemWords(keyword)))?;
                sec.items.push(Item {
                    line: n,
                    name,
                    value,
                    list: keyword == "list",
                });
            }
            "package" => {}
            other => {
                let kw = other.escape_debug().to_string();
                return Err(err(n, None, SyntaxError::Keyword(kw)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(
            words(r#"option a "x \"y\" z" # c"#).unwrap(),
            vec!["option", "a", "x \"y\" z"]
        );
        assert_eq!(words("list b 'p q'").unwrap(), vec!["list", "b", "p q"]);
        assert_eq!(words("option k 'x"), Err(SyntaxError::SingleQuote));
        assert_eq!(words("option k \"x"), Err(SyntaxError::DoubleQuote));
        assert_eq!(words("option k x\\"), Err(SyntaxError::Backslash));
    }

    #[test]
    fn structure() {
        let f = Path::new("f");
        let s = sections(
            "package dcol\nconfig a 'n'\n\toption x 1\nconfig b\n\tlist y 2\n",
            f,
        )
        .unwrap();
        assert_eq!((s.len(), s[0].kind.as_str(), s[1].line), (2, "a", 4));
        assert!(s[1].items[0].list && s[1].items[0].value == "2");
        for (bad, line) in [
            ("option x 'y'\n", 1),
            ("config\n", 1),
            ("config a b c\n", 1),
            ("config a\n\toption x\n", 2),
            ("config a\nbogus line\n", 2),
        ] {
            let e = sections(bad, f).err().expect(bad);
            assert_eq!(e.line(), line, "{bad}: {e}");
        }
    }
}
