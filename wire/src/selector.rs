//! Selectors: `type:value` facts about a workload or an agent (e.g. `unix:uid:1000`).
//!
//! The type is the attestor (`unix`, `tpm`, `x509pop`, `join_token`, ...); the value is everything
//! after the first `:` and may itself contain `:` (`unix:uid:1000` has type `unix`, value `uid:1000`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Longest selector type, in bytes.
pub const SELECTOR_TYPE_BYTES_MAX: usize = 64;
/// Longest selector value, in bytes (room for a `unix:path` of `PATH_MAX`).
pub const SELECTOR_VALUE_BYTES_MAX: usize = 4096;

/// One selector, parsed: a non-empty type of `[a-z0-9_-]` and a non-empty value without control
/// characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Selector {
    kind: String,
    value: String,
}

impl Selector {
    /// Builds a selector from its two parts, checking both.
    pub fn new(kind: &str, value: &str) -> Result<Selector, Error> {
        let bad = |reason: &'static str| Error::InvalidSelector {
            input: format!("{}:{}", truncate(kind), truncate(value)),
            reason,
        };
        if kind.is_empty() {
            return Err(bad("type is empty"));
        }
        if kind.len() > SELECTOR_TYPE_BYTES_MAX {
            return Err(bad("type is longer than 64 bytes"));
        }
        if !kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(bad("type characters are limited to a-z, 0-9, '_' and '-'"));
        }
        if value.is_empty() {
            return Err(bad("value is empty"));
        }
        if value.len() > SELECTOR_VALUE_BYTES_MAX {
            return Err(bad("value is longer than 4096 bytes"));
        }
        if value.chars().any(char::is_control) {
            return Err(bad("value contains a control character"));
        }
        Ok(Selector {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The attestor type, e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The value, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

impl FromStr for Selector {
    type Err = Error;

    fn from_str(input: &str) -> Result<Selector, Error> {
        match input.split_once(':') {
            Some((kind, value)) => Selector::new(kind, value),
            None => Err(Error::InvalidSelector {
                input: truncate(input),
                reason: "expected type:value",
            }),
        }
    }
}

impl TryFrom<String> for Selector {
    type Error = Error;

    fn try_from(value: String) -> Result<Selector, Error> {
        value.parse()
    }
}

impl From<Selector> for String {
    fn from(s: Selector) -> String {
        s.to_string()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({}:{})", self.kind, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_type_and_value() {
        let s: Selector = "unix:uid:1000".parse().expect("selector");
        assert_eq!(s.kind(), "unix");
        assert_eq!(s.value(), "uid:1000");
        assert_eq!(s.to_string(), "unix:uid:1000");
        let t: Selector = "tpm:pcr:7:abcd".parse().expect("selector");
        assert_eq!((t.kind(), t.value()), ("tpm", "pcr:7:abcd"));
        let p: Selector = "unix:path:/usr/bin/my app"
            .parse()
            .expect("spaces are fine");
        assert_eq!(p.value(), "path:/usr/bin/my app");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "unix",
            ":uid:1000",
            "unix:",
            "Unix:uid:1",
            "un ix:uid:1",
            "unix:uid:\n1",
            "unix:uid\u{7f}",
        ] {
            assert!(bad.parse::<Selector>().is_err(), "{bad:?}");
        }
        let long_type = format!("{}:v", "a".repeat(SELECTOR_TYPE_BYTES_MAX + 1));
        assert!(long_type.parse::<Selector>().is_err());
        let ok_value = format!("t:{}", "v".repeat(SELECTOR_VALUE_BYTES_MAX));
        assert!(ok_value.parse::<Selector>().is_ok());
        let long_value = format!("t:{}", "v".repeat(SELECTOR_VALUE_BYTES_MAX + 1));
        assert!(long_value.parse::<Selector>().is_err());
    }

    #[test]
    fn serde_is_the_string_form() {
        let s: Selector = serde_json::from_str("\"unix:gid:5\"").expect("json");
        assert_eq!(serde_json::to_string(&s).expect("ser"), "\"unix:gid:5\"");
        assert!(serde_json::from_str::<Selector>("\"nocolon\"").is_err());
    }
}
