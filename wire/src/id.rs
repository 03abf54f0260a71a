//! SPIFFE IDs and trust domains, parsed once (SPIFFE-ID.md).
//!
//! Rules enforced, each with its own [`IdRule`] so an error says which one failed:
//! - scheme is exactly `spiffe` followed by `://` (like go-spiffe, the lowercase form only);
//! - the trust domain is non-empty, at most [`TRUST_DOMAIN_BYTES_MAX`] bytes, made of
//!   `[a-z0-9._-]` only: so no uppercase, no userinfo (`@`), no port (`:`), no IPv6 literal;
//! - no percent-encoding, no query (`?`) and no fragment (`#`) anywhere;
//! - path segments are non-empty, not `.` or `..`, made of `[a-zA-Z0-9._-]`, and the path has no
//!   trailing `/`; the path is optional (`spiffe://example.org` is the trust domain's own ID);
//! - the whole ID is at most [`SPIFFE_ID_BYTES_MAX`] bytes (the spec's "MUST support" size).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Longest trust domain name accepted, in bytes (SPIFFE-ID.md §2.3).
pub const TRUST_DOMAIN_BYTES_MAX: usize = 255;
/// Longest SPIFFE ID accepted, in bytes (SPIFFE-ID.md §2.3: "MUST support up to 2048 bytes").
pub const SPIFFE_ID_BYTES_MAX: usize = 2048;

const SCHEME_PREFIX: &str = "spiffe://";

/// Which rule of SPIFFE-ID.md an input broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdRule {
    /// The input is empty.
    Empty,
    /// The scheme is missing or is not exactly `spiffe://`.
    Scheme,
    /// The trust domain is empty.
    TrustDomainMissing,
    /// The trust domain has a character outside `[a-z0-9._-]` (uppercase included).
    TrustDomainChar,
    /// The authority has a userinfo part (`user@`).
    Userinfo,
    /// The authority has a port (`:8443`).
    Port,
    /// The trust domain is longer than [`TRUST_DOMAIN_BYTES_MAX`].
    TrustDomainTooLong,
    /// The ID is longer than [`SPIFFE_ID_BYTES_MAX`].
    TooLong,
    /// A `%` appears: percent-encoding is not allowed anywhere.
    PercentEncoding,
    /// A `?` or `#` appears: no query and no fragment.
    QueryOrFragment,
    /// The path has an empty segment (`//`).
    EmptySegment,
    /// The path has a `.` or `..` segment.
    DotSegment,
    /// The path ends with `/`.
    TrailingSlash,
    /// A path segment has a character outside `[a-zA-Z0-9._-]`.
    SegmentChar,
    /// A trust domain was expected but the input has a path.
    UnexpectedPath,
}

impl fmt::Display for IdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            IdRule::Empty => "is empty",
            IdRule::Scheme => "scheme is missing or is not \"spiffe://\"",
            IdRule::TrustDomainMissing => "trust domain is missing",
            IdRule::TrustDomainChar => {
                "trust domain characters are limited to lowercase letters, digits, '.', '-' and '_'"
            }
            IdRule::Userinfo => "trust domain must not contain userinfo ('@')",
            IdRule::Port => "trust domain must not contain a port (':')",
            IdRule::TrustDomainTooLong => "trust domain is longer than 255 bytes",
            IdRule::TooLong => "SPIFFE ID is longer than 2048 bytes",
            IdRule::PercentEncoding => "percent-encoding ('%') is not allowed",
            IdRule::QueryOrFragment => "query ('?') and fragment ('#') are not allowed",
            IdRule::EmptySegment => "path cannot contain empty segments",
            IdRule::DotSegment => "path cannot contain '.' or '..' segments",
            IdRule::TrailingSlash => "path cannot have a trailing slash",
            IdRule::SegmentChar => {
                "path segment characters are limited to letters, digits, '.', '-' and '_'"
            }
            IdRule::UnexpectedPath => "a trust domain must not have a path",
        };
        f.write_str(text)
    }
}

/// A trust domain name such as `example.org` (no scheme, no path).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

/// A SPIFFE ID such as `spiffe://example.org/ns/prod/sa/web`.
///
/// Ordering and equality are byte-wise on the canonical string (the only accepted form is already
/// canonical: lowercase scheme and trust domain).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    text: String,
    /// Byte length of the trust domain, which starts right after `spiffe://`.
    td_len: usize,
}

fn id_error(input: &str, rule: IdRule) -> Error {
    // Cap what we echo back: inputs come from peers and files.
    let mut shown: String = input.chars().take(80).collect();
    if shown.len() < input.len() {
        shown.push('…');
    }
    Error::InvalidId { input: shown, rule }
}

fn check_trust_domain(td: &str) -> Result<(), IdRule> {
    if td.is_empty() {
        return Err(IdRule::TrustDomainMissing);
    }
    if td.contains('@') {
        return Err(IdRule::Userinfo);
    }
    if td.contains(':') {
        return Err(IdRule::Port);
    }
    if td.contains('%') {
        return Err(IdRule::PercentEncoding);
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(IdRule::TrustDomainChar);
    }
    if td.len() > TRUST_DOMAIN_BYTES_MAX {
        return Err(IdRule::TrustDomainTooLong);
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), IdRule> {
    if path.is_empty() {
        return Ok(());
    }
    debug_assert!(path.starts_with('/'));
    if path.contains('%') {
        return Err(IdRule::PercentEncoding);
    }
    if path.ends_with('/') {
        // `spiffe://td/` is a trailing slash too, not an empty segment.
        return Err(IdRule::TrailingSlash);
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(IdRule::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(IdRule::DotSegment);
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(IdRule::SegmentChar);
        }
    }
    Ok(())
}

/// Splits and checks `spiffe://<td><path>`; returns the trust domain's byte length.
fn parse_id(input: &str) -> Result<usize, IdRule> {
    if input.is_empty() {
        return Err(IdRule::Empty);
    }
    if input.len() > SPIFFE_ID_BYTES_MAX {
        return Err(IdRule::TooLong);
    }
    let rest = input.strip_prefix(SCHEME_PREFIX).ok_or(IdRule::Scheme)?;
    if rest.contains('?') || rest.contains('#') {
        return Err(IdRule::QueryOrFragment);
    }
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    check_trust_domain(td)?;
    check_path(path)?;
    Ok(td.len())
}

impl TrustDomain {
    /// The trust domain name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>` (used as bundle-map key and CA URI SAN).
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            text: format!("{SCHEME_PREFIX}{}", self.0),
            td_len: self.0.len(),
        }
    }

    /// The SPIFFE ID `spiffe://<name>/<segments joined by '/'>`, each segment checked.
    pub fn join(&self, segments: &[&str]) -> Result<SpiffeId, Error> {
        let mut text = format!("{SCHEME_PREFIX}{}", self.0);
        for s in segments {
            text.push('/');
            text.push_str(s);
        }
        text.parse()
    }
}

/// The path prefix of sigil's server node identities: `spiffe://<td>/sigil/server/<node ID>`.
pub const SERVER_PATH_PREFIX: &str = "/sigil/server/";
/// The path prefix of sigil's agent identities: `spiffe://<td>/sigil/agent/<method>/<id>`.
pub const AGENT_PATH_PREFIX: &str = "/sigil/agent/";

/// sigil's own identities (under the reserved `/sigil/` path, which entries cannot claim).
impl TrustDomain {
    /// Server node `node_id`'s SPIFFE ID, `spiffe://<td>/sigil/server/<node_id>`.
    pub fn server_id(&self, node_id: u64) -> SpiffeId {
        // A checked trust domain and a decimal segment: always a valid ID, far below the limit.
        SpiffeId {
            text: format!("{SCHEME_PREFIX}{}{SERVER_PATH_PREFIX}{node_id}", self.0),
            td_len: self.0.len(),
        }
    }

    /// The parent of every server node identity, `spiffe://<td>/sigil/server`.
    pub fn servers_id(&self) -> SpiffeId {
        let prefix = SERVER_PATH_PREFIX.trim_end_matches('/');
        SpiffeId {
            text: format!("{SCHEME_PREFIX}{}{prefix}", self.0),
            td_len: self.0.len(),
        }
    }

    /// The SPIFFE ID of an agent attested by `method` (`join_token`, `x509pop`, `tpm`) with the
    /// identifying value `key` (a token hash, a certificate fingerprint, an EK hash).
    pub fn agent_id(&self, method: &str, key: &str) -> Result<SpiffeId, Error> {
        self.join(&["sigil", "agent", method, key])
    }
}

impl SpiffeId {
    /// The node ID if this is a server node identity of `td` (`spiffe://<td>/sigil/server/<n>`
    /// with `n` a canonical decimal `u64`), `None` for anything else.
    pub fn server_node(&self, td: &TrustDomain) -> Option<u64> {
        if !self.is_member_of(td) {
            return None;
        }
        let digits = self.path().strip_prefix(SERVER_PATH_PREFIX)?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return None;
        }
        digits.parse().ok()
    }

    /// Whether this is an agent identity (`spiffe://<any td>/sigil/agent/...`).
    pub fn is_agent(&self) -> bool {
        self.path().starts_with(AGENT_PATH_PREFIX)
    }
}

impl FromStr for TrustDomain {
    type Err = Error;

    /// Accepts a bare name (`example.org`) or the trust domain's ID (`spiffe://example.org`).
    fn from_str(input: &str) -> Result<Self, Error> {
        if input.is_empty() {
            return Err(id_error(input, IdRule::Empty));
        }
        if input.contains("://") {
            let id: SpiffeId = input.parse()?;
            if !id.path().is_empty() {
                return Err(id_error(input, IdRule::UnexpectedPath));
            }
            return Ok(id.trust_domain());
        }
        if input.contains('/') {
            // Either a path after a bare name or a malformed scheme.
            let rule = if input.contains(':') {
                IdRule::Scheme
            } else {
                IdRule::UnexpectedPath
            };
            return Err(id_error(input, rule));
        }
        if input.contains('?') || input.contains('#') {
            return Err(id_error(input, IdRule::QueryOrFragment));
        }
        check_trust_domain(input).map_err(|rule| id_error(input, rule))?;
        Ok(TrustDomain(input.to_owned()))
    }
}

impl SpiffeId {
    /// The full ID, e.g. `spiffe://example.org/web`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The trust domain part, borrowed.
    pub fn trust_domain_str(&self) -> &str {
        let start = SCHEME_PREFIX.len();
        &self.text[start..start + self.td_len]
    }

    /// The path, empty or starting with `/` (e.g. `/web`).
    pub fn path(&self) -> &str {
        &self.text[SCHEME_PREFIX.len() + self.td_len..]
    }

    /// True for the trust domain's own ID (`spiffe://td`): usable by a CA, never by a leaf SVID.
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }

    /// True when this ID belongs to `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_str() == td.as_str()
    }
}

impl FromStr for SpiffeId {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let td_len = parse_id(input).map_err(|rule| id_error(input, rule))?;
        Ok(SpiffeId {
            text: input.to_owned(),
            td_len,
        })
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = Error;

    fn try_from(value: String) -> Result<Self, Error> {
        let td_len = parse_id(&value).map_err(|rule| id_error(&value, rule))?;
        Ok(SpiffeId {
            text: value,
            td_len,
        })
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = Error;

    fn try_from(value: String) -> Result<Self, Error> {
        value.parse()
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.text
    }
}

impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> String {
        td.0
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.text)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_of(input: &str) -> IdRule {
        match input.parse::<SpiffeId>() {
            Err(Error::InvalidId { rule, .. }) => rule,
            other => panic!("{input:?}: expected an InvalidId error, got {other:?}"),
        }
    }

    fn td_rule_of(input: &str) -> IdRule {
        match input.parse::<TrustDomain>() {
            Err(Error::InvalidId { rule, .. }) => rule,
            other => panic!("{input:?}: expected an InvalidId error, got {other:?}"),
        }
    }

    #[test]
    fn valid_ids_parse_and_round_trip() {
        let valid = [
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/web", "example.org", "/web"),
            (
                "spiffe://example.org/ns/prod/sa/web",
                "example.org",
                "/ns/prod/sa/web",
            ),
            ("spiffe://a", "a", ""),
            ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
            (
                "spiffe://under_score.example/p",
                "under_score.example",
                "/p",
            ),
            ("spiffe://dash-ed.example/p", "dash-ed.example", "/p"),
            (
                "spiffe://example.org/UPPER/Case",
                "example.org",
                "/UPPER/Case",
            ),
            (
                "spiffe://example.org/a.b/c-d/e_f",
                "example.org",
                "/a.b/c-d/e_f",
            ),
            ("spiffe://example.org/...", "example.org", "/..."),
            ("spiffe://example.org/.hidden", "example.org", "/.hidden"),
            ("spiffe://example.org/a..b", "example.org", "/a..b"),
            ("spiffe://0/9", "0", "/9"),
            ("spiffe://.../x", "...", "/x"),
            ("spiffe://-/_", "-", "/_"),
            (
                "spiffe://example.org/sigil/server/1",
                "example.org",
                "/sigil/server/1",
            ),
        ];
        for (input, td, path) in valid {
            let id: SpiffeId = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.to_string(), input, "Display round-trip");
            assert_eq!(id.trust_domain_str(), td);
            assert_eq!(id.trust_domain().as_str(), td);
            assert_eq!(id.path(), path);
            assert_eq!(id.is_trust_domain_id(), path.is_empty());
            let again: SpiffeId = id.to_string().parse().expect("re-parse");
            assert_eq!(again, id);
        }
    }

    #[test]
    fn invalid_ids_report_the_broken_rule() {
        let invalid = [
            ("", IdRule::Empty),
            ("example.org/web", IdRule::Scheme),
            ("http://example.org/web", IdRule::Scheme),
            ("spiffe:/example.org/web", IdRule::Scheme),
            ("spiffe:example.org", IdRule::Scheme),
            ("SPIFFE://example.org/web", IdRule::Scheme),
            ("spiffe//example.org", IdRule::Scheme),
            (" spiffe://example.org", IdRule::Scheme),
            ("spiffe://", IdRule::TrustDomainMissing),
            ("spiffe:///path", IdRule::TrustDomainMissing),
            ("spiffe://Example.org", IdRule::TrustDomainChar),
            ("spiffe://EXAMPLE.ORG/web", IdRule::TrustDomainChar),
            ("spiffe://exa mple.org", IdRule::TrustDomainChar),
            ("spiffe://example.org!/x", IdRule::TrustDomainChar),
            ("spiffe://[::1]/x", IdRule::Port),
            ("spiffe://ex$ample.org", IdRule::TrustDomainChar),
            ("spiffe://éxample.org", IdRule::TrustDomainChar),
            ("spiffe://user@example.org/x", IdRule::Userinfo),
            ("spiffe://user:pw@example.org", IdRule::Userinfo),
            ("spiffe://example.org:8443/x", IdRule::Port),
            ("spiffe://example.org:/x", IdRule::Port),
            ("spiffe://ex%41mple.org", IdRule::PercentEncoding),
            ("spiffe://example.org/a%20b", IdRule::PercentEncoding),
            ("spiffe://example.org/%2e%2e", IdRule::PercentEncoding),
            ("spiffe://example.org?x=1", IdRule::QueryOrFragment),
            ("spiffe://example.org/web?x=1", IdRule::QueryOrFragment),
            ("spiffe://example.org/web#frag", IdRule::QueryOrFragment),
            ("spiffe://example.org#frag", IdRule::QueryOrFragment),
            ("spiffe://example.org//web", IdRule::EmptySegment),
            ("spiffe://example.org/a//b", IdRule::EmptySegment),
            ("spiffe://example.org/.", IdRule::DotSegment),
            ("spiffe://example.org/..", IdRule::DotSegment),
            ("spiffe://example.org/a/./b", IdRule::DotSegment),
            ("spiffe://example.org/a/../b", IdRule::DotSegment),
            ("spiffe://example.org/", IdRule::TrailingSlash),
            ("spiffe://example.org/web/", IdRule::TrailingSlash),
            ("spiffe://example.org/a b", IdRule::SegmentChar),
            ("spiffe://example.org/a$b", IdRule::SegmentChar),
            ("spiffe://example.org/a:b", IdRule::SegmentChar),
            ("spiffe://example.org/a@b", IdRule::SegmentChar),
            ("spiffe://example.org/ä", IdRule::SegmentChar),
            ("spiffe://example.org/a+b", IdRule::SegmentChar),
            ("spiffe://example.org/a\\b", IdRule::SegmentChar),
            ("spiffe://example.org/a\0b", IdRule::SegmentChar),
            ("spiffe://example.org/a~b", IdRule::SegmentChar),
        ];
        for (input, rule) in invalid {
            assert_eq!(rule_of(input), rule, "{input:?}");
        }
    }

    #[test]
    fn length_limits() {
        // Trust domain: 255 bytes accepted, 256 rejected.
        let td_255 = "a".repeat(TRUST_DOMAIN_BYTES_MAX);
        let td_256 = "a".repeat(TRUST_DOMAIN_BYTES_MAX + 1);
        assert!(format!("spiffe://{td_255}/x").parse::<SpiffeId>().is_ok());
        assert!(td_255.parse::<TrustDomain>().is_ok());
        assert_eq!(
            rule_of(&format!("spiffe://{td_256}/x")),
            IdRule::TrustDomainTooLong
        );
        assert_eq!(td_rule_of(&td_256), IdRule::TrustDomainTooLong);

        // Whole ID: exactly 2048 bytes accepted, 2049 rejected.
        let prefix = "spiffe://example.org/";
        let fill = SPIFFE_ID_BYTES_MAX - prefix.len();
        let id_2048 = format!("{prefix}{}", "p".repeat(fill));
        assert_eq!(id_2048.len(), SPIFFE_ID_BYTES_MAX);
        let parsed: SpiffeId = id_2048.parse().expect("2048-byte ID");
        assert_eq!(parsed.to_string(), id_2048);
        let id_2049 = format!("{id_2048}q");
        assert_eq!(rule_of(&id_2049), IdRule::TooLong);

        // Many short segments up to the limit.
        let many = format!(
            "spiffe://example.org{}",
            "/s".repeat((SPIFFE_ID_BYTES_MAX - 20) / 2)
        );
        assert!(many.len() <= SPIFFE_ID_BYTES_MAX);
        assert!(many.parse::<SpiffeId>().is_ok());
    }

    #[test]
    fn error_echo_is_bounded() {
        let long = format!("spiffe://example.org/{}", "x y".repeat(500));
        let err = long.parse::<SpiffeId>().expect_err("space in path");
        assert!(err.to_string().len() < 300, "{err}");
        assert!(err.to_string().contains("path segment characters"));
    }

    #[test]
    fn trust_domain_forms() {
        let valid = [
            "example.org",
            "spiffe://example.org",
            "a",
            "1.2.3.4",
            "x_y-z.0",
        ];
        for input in valid {
            let td: TrustDomain = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(td.id().to_string(), format!("spiffe://{}", td));
            let again: TrustDomain = td.to_string().parse().expect("round-trip");
            assert_eq!(again, td);
        }
        let invalid = [
            ("", IdRule::Empty),
            ("Example.org", IdRule::TrustDomainChar),
            ("example.org:443", IdRule::Port),
            ("user@example.org", IdRule::Userinfo),
            ("example.org/path", IdRule::UnexpectedPath),
            ("spiffe://example.org/path", IdRule::UnexpectedPath),
            ("http://example.org", IdRule::Scheme),
            ("ex%41mple.org", IdRule::PercentEncoding),
            ("example.org?q", IdRule::QueryOrFragment),
            ("spiffe://", IdRule::TrustDomainMissing),
            ("exa mple", IdRule::TrustDomainChar),
        ];
        for (input, rule) in invalid {
            assert_eq!(td_rule_of(input), rule, "{input:?}");
        }
    }

    #[test]
    fn sigil_identities() {
        let td: TrustDomain = "example.org".parse().expect("td");
        let id = |s: &str| -> SpiffeId { s.parse().expect("id") };
        assert_eq!(td.server_id(3), id("spiffe://example.org/sigil/server/3"));
        assert_eq!(
            td.server_id(u64::MAX).server_node(&td),
            Some(u64::MAX),
            "round trip"
        );
        assert_eq!(td.servers_id(), id("spiffe://example.org/sigil/server"));
        for (text, node) in [
            ("spiffe://example.org/sigil/server/7", Some(7)),
            ("spiffe://example.org/sigil/server/0", Some(0)),
            ("spiffe://other.org/sigil/server/7", None),
            ("spiffe://example.org/web", None),
            ("spiffe://example.org/sigil/server", None),
            ("spiffe://example.org/sigil/server/07", None),
            ("spiffe://example.org/sigil/server/7/x", None),
            (
                "spiffe://example.org/sigil/server/18446744073709551616",
                None,
            ),
            ("spiffe://example.org/sigil/agent/7", None),
        ] {
            assert_eq!(id(text).server_node(&td), node, "{text}");
        }
        let agent = td.agent_id("join_token", "ab12").expect("agent");
        assert_eq!(
            agent,
            id("spiffe://example.org/sigil/agent/join_token/ab12")
        );
        assert!(agent.is_agent());
        assert!(!td.server_id(1).is_agent());
        assert!(!id("spiffe://example.org/sigil/agentx/1").is_agent());
        assert!(
            td.agent_id("x509pop", "a/b").is_ok(),
            "two segments, both valid"
        );
        assert!(td.agent_id("tpm", "..").is_err());
    }

    #[test]
    fn join_and_membership() {
        let td: TrustDomain = "example.org".parse().expect("td");
        let id = td.join(&["sigil", "server", "3"]).expect("join");
        assert_eq!(id.as_str(), "spiffe://example.org/sigil/server/3");
        assert!(id.is_member_of(&td));
        let other: TrustDomain = "example.com".parse().expect("td");
        assert!(!id.is_member_of(&other));
        assert!(td.join(&["bad segment"]).is_err());
        assert!(td.join(&[".."]).is_err());
        assert!(td.id().is_trust_domain_id());
    }

    #[test]
    fn ordering_and_hashing_follow_the_text() {
        use std::collections::{BTreeSet, HashSet};
        let ids: Vec<SpiffeId> = [
            "spiffe://b/x",
            "spiffe://a/y",
            "spiffe://a/x",
            "spiffe://a/x",
        ]
        .iter()
        .map(|s| s.parse().expect("id"))
        .collect();
        let sorted: Vec<String> = ids
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(sorted, ["spiffe://a/x", "spiffe://a/y", "spiffe://b/x"]);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3);
    }

    #[test]
    fn serde_parses_and_rejects() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://example.org/web\"").expect("json");
        assert_eq!(
            serde_json::to_string(&id).expect("ser"),
            "\"spiffe://example.org/web\""
        );
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://example.org/\"").is_err());
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://Ex.org/a\"").is_err());
        let td: TrustDomain = serde_json::from_str("\"example.org\"").expect("json");
        assert_eq!(serde_json::to_string(&td).expect("ser"), "\"example.org\"");
        assert!(serde_json::from_str::<TrustDomain>("\"EXAMPLE\"").is_err());
    }
}
