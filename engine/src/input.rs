//! Bad input, reported the way racetrack reports it everywhere: one line,
//! `FILE:LINE: key `a.b`: what is wrong`.
//!
//! Kernel profiles and scenarios are TOML read into serde structs with
//! `deny_unknown_fields`; these helpers turn the parser's and the
//! validators' complaints into that one line.

use std::fmt;

/// A file, or a command-line override, that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// A file name, a preset name, or `--set`.
    pub source: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key the problem is about, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for InputError {}

/// The 1-based line that byte `offset` of `bytes` is on.
pub fn line_at(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// `bytes` as text, or `SOURCE:LINE: not UTF-8 text` naming the line of the
/// first byte that is not, as every input file of racetrack reports it.
pub fn utf8_text<'a>(source: &str, bytes: &'a [u8]) -> Result<&'a str, InputError> {
    std::str::from_utf8(bytes).map_err(|e| InputError {
        source: source.to_string(),
        line: Some(line_at(bytes, e.valid_up_to())),
        key: None,
        message: "not UTF-8 text".into(),
    })
}

impl InputError {
    /// From a TOML parse or deserialisation error in `text`.
    pub fn from_toml(e: &toml::de::Error, text: &str, source: &str) -> Self {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        // The crate's Display adds a source excerpt over several lines; keep the message.
        let message = e.message().trim().replace('\n', " ");
        InputError { source: source.to_string(), line, key: key_at(text, line), message }
    }

    /// From a validator's `(dotted key, why)`, located in `text` if it is written there.
    pub fn invalid(text: &str, source: &str, key: &str, message: String) -> Self {
        InputError { source: source.to_string(), line: line_of_key(text, key), key: Some(key.to_string()), message }
    }
}

/// The dotted key defined on `line` (1-based), from the enclosing `[table]` headers.
pub fn key_at(text: &str, line: Option<usize>) -> Option<String> {
    let line = line?;
    let mut table = String::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            table = h.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if i + 1 == line {
                return Some(table);
            }
        } else if i + 1 == line {
            let k = l.split('=').next()?.trim();
            if k.is_empty() || l.starts_with('#') {
                return None;
            }
            return Some(if table.is_empty() { k.to_string() } else { format!("{table}.{k}") });
        }
    }
    None
}

/// The line where a dotted key (`conntrack.max`, `nat.search.attempts`) is
/// set, including keys of inline tables (`chain_limit = { min = 50, … }`).
pub fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim().to_string();
            if current == dotted {
                return Some(i + 1);
            }
            continue;
        }
        let k = l.split('=').next().map(str::trim).unwrap_or("");
        if current == table && k == key {
            return Some(i + 1);
        }
        if let Some((parent, leaf)) = table.rsplit_once('.') {
            if current == parent && k == leaf {
                return Some(i + 1);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "name = \"x\"\n[conntrack]\nmax = 5\nchain_limit = { min = 1, spread = 2 }\n[nat.search]\nkind = \"bounded\"\n";

    #[test]
    fn keys_and_lines_find_each_other() {
        assert_eq!(key_at(TEXT, Some(1)).as_deref(), Some("name"));
        assert_eq!(key_at(TEXT, Some(3)).as_deref(), Some("conntrack.max"));
        assert_eq!(key_at(TEXT, Some(5)).as_deref(), Some("nat.search"));
        assert_eq!(line_of_key(TEXT, "conntrack.max"), Some(3));
        assert_eq!(line_of_key(TEXT, "conntrack.chain_limit.min"), Some(4));
        assert_eq!(line_of_key(TEXT, "nat.search.kind"), Some(6));
        assert_eq!(line_of_key(TEXT, "nope"), None);
    }

    #[test]
    fn displays_as_one_line() {
        let e = InputError::invalid(TEXT, "f.toml", "conntrack.max", "must be at least 1".into());
        assert_eq!(e.to_string(), "f.toml:3: key `conntrack.max`: must be at least 1");
    }
}
