//! What can be wrong with a configuration file, and where: errors stop the
//! daemon (or keep the running configuration on reload); warnings are logged.

use std::path::PathBuf;

use super::Section;
use crate::http::WireError;
use crate::trust::TrustError;
use crate::types::ParseError;

/// An invalid configuration: what is wrong, in which file, on which line and,
/// where it is about one, in which section and option. `Display` reads
/// `FILE:LINE: option 'NAME': WHAT`, the form logs, `dcol config check` and
/// LuCI show.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not UTF-8 (from this line on).
    #[error("{}:{line}: not valid UTF-8", file.display())]
    Utf8 {
        /// The file.
        file: PathBuf,
        /// 1-based line of the first invalid byte.
        line: usize,
    },
    /// A line that is not UCI syntax.
    #[error("{}:{line}: {what}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The option, when the line names one.
        option: Option<String>,
        /// What is wrong.
        what: SyntaxError,
    },
    /// A value the option does not take.
    #[error("{}:{line}: option '{option}': {what}", file.display())]
    Value {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The section's type.
        section: Section,
        /// The option.
        option: &'static str,
        /// What is wrong with the value.
        what: ValueError,
    },
    /// A section without an option it needs.
    #[error("{}:{line}: option '{option}': required in a '{}' section", file.display(), section.uci_type())]
    Missing {
        /// The file.
        file: PathBuf,
        /// 1-based line of the section's `config` line.
        line: usize,
        /// The section's type.
        section: Section,
        /// The missing option.
        option: &'static str,
    },
}

impl ConfigError {
    /// 1-based line (0 when the file could not be read).
    pub fn line(&self) -> usize {
        match self {
            ConfigError::Read { .. } => 0,
            ConfigError::Utf8 { line, .. }
            | ConfigError::Syntax { line, .. }
            | ConfigError::Value { line, .. }
            | ConfigError::Missing { line, .. } => *line,
        }
    }

    /// The option the error is about, if any.
    pub fn option(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } | ConfigError::Utf8 { .. } => None,
            ConfigError::Syntax { option, .. } => option.as_deref(),
            ConfigError::Value { option, .. } => Some(option),
            ConfigError::Missing { option, .. } => Some(option),
        }
    }
}

/// A line that is not UCI syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// A `'` without its closing `'`.
    #[error("unterminated single quote")]
    SingleQuote,
    /// A `"` without its closing `"`.
    #[error("unterminated double quote")]
    DoubleQuote,
    /// A `\` at the end of the line.
    #[error("dangling backslash")]
    Backslash,
    /// `config` without a type.
    #[error("'config' needs a section type")]
    NoSectionType,
    /// `config TYPE NAME` followed by more words.
    #[error("too many words after 'config'")]
    ConfigWords,
    /// `option`/`list` before any `config`.
    #[error("'{0}' outside a 'config' section")]
    OutsideSection(&'static str),
    /// `option`/`list` without exactly a name and a value.
    #[error("expected '{0} <name> <value>'")]
    ItemWords(&'static str),
    /// A line starting with a word UCI does not know.
    #[error("unknown keyword '{0}'")]
    Keyword(String),
}

/// A value an option does not take; each variant carries the value
/// (shortened to 64 characters, escaped) where the message shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a UCI boolean.
    #[error("expected a boolean (1/0, yes/no, on/off, true/false), got '{0}'")]
    Bool(String),
    /// Not a whole number in the range.
    #[error("expected a number {min}-{max}, got '{got}'")]
    Number {
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
        /// The value.
        got: String,
    },
    /// Neither 0 (which means `zero`) nor a number in the range.
    #[error("expected 0 ({zero}) or {min}-{max}, got '{got}'")]
    ZeroOr {
        /// What 0 means.
        zero: &'static str,
        /// Smallest allowed other than 0.
        min: u32,
        /// Largest allowed.
        max: u32,
        /// The value.
        got: String,
    },
    /// Not one of the listed words.
    #[error("expected {}, got '{got}'", words.join(", "))]
    Choice {
        /// The words allowed.
        words: &'static [&'static str],
        /// The value.
        got: String,
    },
    /// Empty, or with a NUL byte.
    #[error("expected a file path")]
    Path,
    /// Not `lo-hi` with `1024 <= lo <= hi`.
    #[error("expected a port range like '40000-40999' (ports >= 1024), got '{0}'")]
    NatPorts(String),
    /// A block of the wrong family or too small.
    #[error("expected an {family} subnet of /{max_prefix} or larger, got '{got}'")]
    Subnet {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// Longest prefix allowed.
        max_prefix: u8,
        /// The value.
        got: String,
    },
    /// Not `address:port`.
    #[error("expected address:port ('203.0.113.5:7447' or '[2001:db8::1]:7447'), got '{0}'")]
    Socket(String),
    /// An unspecified or multicast address, or port 0, where others must connect.
    #[error("expected a reachable unicast address and port, got '{0}'")]
    Unreachable(String),
    /// Not `host:port`.
    #[error("expected host:port, got '{0}'")]
    HostPort(String),
    /// Not a Linux interface name of at most `max` characters.
    #[error("expected an interface name (1-{max} of [A-Za-z0-9-_.@]), got '{got}'")]
    IfName {
        /// Longest allowed.
        max: usize,
        /// The value.
        got: String,
    },
    /// Not an nftables table name.
    #[error("expected 1-16 of [a-z0-9_], got '{0}'")]
    Table(String),
    /// Not a member id.
    #[error("expected a member id of 16 hex digits, got '{0}'")]
    MemberId(String),
    /// Not decimal gigabytes.
    #[error("expected gigabytes like '100' or '0.5', got '{0}'")]
    Gigabytes(String),
    /// Not a member name.
    #[error(transparent)]
    Name(#[from] TrustError),
    /// Not an `http://` URL.
    #[error(transparent)]
    Url(#[from] WireError),
    /// Not a value of a [`crate::types`] type.
    #[error(transparent)]
    Type(#[from] ParseError),
    /// A TCP port another option of the file uses already.
    #[error("TCP port {port} is taken by option '{by}'")]
    PortTaken {
        /// The port.
        port: u16,
        /// The other option.
        by: &'static str,
    },
}

/// Something in the file the daemon ignores or resolves; logged, never fatal
/// (a newer LuCI may write an option this daemon does not know yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigWarning {
    /// An option the section type does not have.
    #[error("{}:{line}: unknown option '{option}' ignored", file.display())]
    UnknownOption {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The option (escaped).
        option: String,
    },
    /// A section type the daemon does not have.
    #[error("{}:{line}: unknown section type '{kind}' ignored", file.display())]
    UnknownSection {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The type (escaped).
        kind: String,
    },
    /// `list` for a single-valued option.
    #[error("{}:{line}: '{option}' is a single option; 'list' used", file.display())]
    ListForOption {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The option.
        option: &'static str,
    },
    /// A single-valued option given again.
    #[error("{}:{line}: option '{option}' given twice; the last one wins", file.display())]
    Twice {
        /// The file.
        file: PathBuf,
        /// 1-based line of the later one.
        line: usize,
        /// The option.
        option: &'static str,
    },
    /// No `config dcol` section.
    #[error("{}: no 'config dcol' section; using defaults", file.display())]
    NoMain {
        /// The file.
        file: PathBuf,
    },
}
