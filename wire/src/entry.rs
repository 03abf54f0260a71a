//! Registration entries: which workloads (selectors, under which parent) get which SPIFFE ID.
//!
//! Fields follow SPIRE's `RegistrationEntry` (spiffe-spire.md §3). An entry is checked as a whole
//! by [`RegistrationEntry::validate`], which deserialization always runs, so a decoded entry is a
//! valid entry.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Selector, SpiffeId, TrustDomain};

/// Most selectors one entry may carry.
pub const SELECTORS_PER_ENTRY_MAX: usize = 64;
/// Most DNS names one entry may carry.
pub const DNS_NAMES_PER_ENTRY_MAX: usize = 32;
/// Most federated trust domains one entry may name.
pub const FEDERATES_WITH_PER_ENTRY_MAX: usize = 32;
/// Longest hint, in bytes (SPIFFE_Workload_API.md: SHOULD NOT exceed 1024 bytes).
pub const HINT_BYTES_MAX: usize = 1024;
/// Longest SVID TTL an entry may ask for (one year).
pub const SVID_TTL_SECS_MAX: u32 = 366 * 24 * 3600;
/// Longest entry ID, in bytes.
pub const ENTRY_ID_BYTES_MAX: usize = 64;
/// The path prefix reserved for sigil's own server and agent identities; entries cannot claim it.
pub const RESERVED_PATH_PREFIX: &str = "/sigil/";

/// An entry's identifier: 1 to 64 bytes of `[A-Za-z0-9_-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EntryId(String);

impl EntryId {
    /// An ID from 128 random bits (lowercase hex); the bits come from the caller's seeded RNG.
    pub fn from_random(bits: [u8; 16]) -> EntryId {
        EntryId(bits.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The ID text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EntryId {
    type Err = Error;

    fn from_str(s: &str) -> Result<EntryId, Error> {
        let ok = !s.is_empty()
            && s.len() <= ENTRY_ID_BYTES_MAX
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(EntryId(s.to_owned()))
        } else {
            Err(Error::InvalidEntry {
                reason: "entry id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'".into(),
            })
        }
    }
}

impl TryFrom<String> for EntryId {
    type Error = Error;
    fn try_from(s: String) -> Result<EntryId, Error> {
        s.parse()
    }
}

impl From<EntryId> for String {
    fn from(id: EntryId) -> String {
        id.0
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({})", self.0)
    }
}

/// A registration entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EntryFields")]
pub struct RegistrationEntry {
    /// Unique ID, assigned at creation.
    pub id: EntryId,
    /// The identity issued to matching workloads.
    pub spiffe_id: SpiffeId,
    /// The agent (or server, or another entry's ID) under which the workload must run.
    pub parent_id: SpiffeId,
    /// All of these must be among the workload's attested selectors.
    pub selectors: BTreeSet<Selector>,
    /// X.509-SVID lifetime; 0 means the server's default.
    pub x509_svid_ttl_secs: u32,
    /// JWT-SVID lifetime; 0 means the server's default.
    pub jwt_svid_ttl_secs: u32,
    /// DNS SANs added to the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Federated trust domains whose bundles the workload receives.
    pub federates_with: BTreeSet<TrustDomain>,
    /// The workload may use the admin API.
    pub admin: bool,
    /// The workload is a downstream signing authority.
    pub downstream: bool,
    /// Free-form hint returned with the SVID (Workload API `hint`).
    pub hint: String,
    /// Bumped on every update.
    pub revision: u64,
    /// Creation time, Unix seconds.
    pub created_at_secs: u64,
    /// Optional expiry, Unix seconds (data management, not a security feature).
    pub expires_at_secs: Option<u64>,
}

/// The wire shape of an entry before [`RegistrationEntry::validate`].
#[derive(Deserialize)]
struct EntryFields {
    id: EntryId,
    spiffe_id: SpiffeId,
    parent_id: SpiffeId,
    selectors: BTreeSet<Selector>,
    x509_svid_ttl_secs: u32,
    jwt_svid_ttl_secs: u32,
    dns_names: Vec<String>,
    federates_with: BTreeSet<TrustDomain>,
    admin: bool,
    downstream: bool,
    hint: String,
    revision: u64,
    created_at_secs: u64,
    expires_at_secs: Option<u64>,
}

impl TryFrom<EntryFields> for RegistrationEntry {
    type Error = Error;

    fn try_from(f: EntryFields) -> Result<RegistrationEntry, Error> {
        let entry = RegistrationEntry {
            id: f.id,
            spiffe_id: f.spiffe_id,
            parent_id: f.parent_id,
            selectors: f.selectors,
            x509_svid_ttl_secs: f.x509_svid_ttl_secs,
            jwt_svid_ttl_secs: f.jwt_svid_ttl_secs,
            dns_names: f.dns_names,
            federates_with: f.federates_with,
            admin: f.admin,
            downstream: f.downstream,
            hint: f.hint,
            revision: f.revision,
            created_at_secs: f.created_at_secs,
            expires_at_secs: f.expires_at_secs,
        };
        entry.validate()?;
        Ok(entry)
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidEntry {
        reason: reason.into(),
    }
}

/// Checks a DNS name for an X.509 SAN: 1-253 bytes, labels of 1-63 `[A-Za-z0-9-]` not starting or
/// ending with `-`; a leading `*.` wildcard label is allowed.
pub fn check_dns_name(name: &str) -> Result<(), Error> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !bare.split('.').all(label_ok) {
        let shown: String = name.chars().take(64).collect();
        return Err(invalid(format!("invalid DNS name {shown:?}")));
    }
    Ok(())
}

impl RegistrationEntry {
    /// An entry `id` giving `spiffe_id` to workloads with all of `selectors` under `parent_id`,
    /// with every other field at its default: server-default TTLs, no DNS names, federation,
    /// admin, downstream or hint, revision 0, created at `created_at_secs`, no expiry. (Not yet
    /// validated: see [`RegistrationEntry::validate`].)
    pub fn new(
        id: EntryId,
        spiffe_id: SpiffeId,
        parent_id: SpiffeId,
        selectors: BTreeSet<Selector>,
        created_at_secs: u64,
    ) -> RegistrationEntry {
        RegistrationEntry {
            id,
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl_secs: 0,
            jwt_svid_ttl_secs: 0,
            dns_names: Vec::new(),
            federates_with: BTreeSet::new(),
            admin: false,
            downstream: false,
            hint: String::new(),
            revision: 0,
            created_at_secs,
            expires_at_secs: None,
        }
    }

    /// Checks the rules that span fields: a non-root SPIFFE ID outside the reserved `/sigil/`
    /// space, 1 to [`SELECTORS_PER_ENTRY_MAX`] selectors, bounded TTLs, DNS names, federation
    /// list and hint. Every limit is a named constant of this module.
    pub fn validate(&self) -> Result<(), Error> {
        if self.spiffe_id.is_trust_domain_id() {
            return Err(invalid(
                "spiffe_id must have a path (a trust domain's own ID is not a workload identity)",
            ));
        }
        if self.spiffe_id.path().starts_with(RESERVED_PATH_PREFIX) {
            return Err(invalid(
                "spiffe_id paths under /sigil/ are reserved for sigil's servers and agents",
            ));
        }
        if self.spiffe_id == self.parent_id {
            return Err(invalid("spiffe_id and parent_id must differ"));
        }
        if self.selectors.is_empty() {
            return Err(invalid("an entry needs at least one selector"));
        }
        if self.selectors.len() > SELECTORS_PER_ENTRY_MAX {
            return Err(invalid(format!(
                "an entry may have at most {SELECTORS_PER_ENTRY_MAX} selectors"
            )));
        }
        if self.x509_svid_ttl_secs > SVID_TTL_SECS_MAX || self.jwt_svid_ttl_secs > SVID_TTL_SECS_MAX
        {
            return Err(invalid(format!(
                "SVID TTLs may be at most {SVID_TTL_SECS_MAX} seconds"
            )));
        }
        if self.dns_names.len() > DNS_NAMES_PER_ENTRY_MAX {
            return Err(invalid(format!(
                "an entry may have at most {DNS_NAMES_PER_ENTRY_MAX} DNS names"
            )));
        }
        for name in &self.dns_names {
            check_dns_name(name)?;
        }
        if self.federates_with.len() > FEDERATES_WITH_PER_ENTRY_MAX {
            return Err(invalid(format!(
                "an entry may federate with at most {FEDERATES_WITH_PER_ENTRY_MAX} trust domains"
            )));
        }
        if self.federates_with.contains(&self.spiffe_id.trust_domain()) {
            return Err(invalid(
                "federates_with must not name the entry's own trust domain",
            ));
        }
        if self.hint.len() > HINT_BYTES_MAX {
            return Err(invalid(format!(
                "hint may be at most {HINT_BYTES_MAX} bytes"
            )));
        }
        if self.hint.chars().any(char::is_control) {
            return Err(invalid("hint must not contain control characters"));
        }
        Ok(())
    }

    /// True when every selector of this entry is in `workload_selectors`.
    pub fn matches(&self, workload_selectors: &BTreeSet<Selector>) -> bool {
        self.selectors.is_subset(workload_selectors)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_entry() -> RegistrationEntry {
        RegistrationEntry {
            id: EntryId::from_random([7; 16]),
            spiffe_id: "spiffe://example.org/web".parse().expect("id"),
            parent_id: "spiffe://example.org/sigil/agent/join_token/abc"
                .parse()
                .expect("id"),
            selectors: ["unix:uid:1000", "unix:gid:1000"]
                .iter()
                .map(|s| s.parse().expect("selector"))
                .collect(),
            x509_svid_ttl_secs: 3600,
            jwt_svid_ttl_secs: 300,
            dns_names: vec!["web.example.org".into(), "*.web.example.org".into()],
            federates_with: ["partner.example".parse().expect("td")]
                .into_iter()
                .collect(),
            admin: false,
            downstream: false,
            hint: "external".into(),
            revision: 3,
            created_at_secs: 1_700_000_000,
            expires_at_secs: None,
        }
    }

    #[test]
    fn sample_is_valid_and_round_trips() {
        let e = sample_entry();
        e.validate().expect("valid");
        let json = serde_json::to_string(&e).expect("ser");
        let back: RegistrationEntry = serde_json::from_str(&json).expect("de");
        assert_eq!(back, e);
    }

    #[test]
    fn validate_rejects_each_rule() {
        type Mutation = Box<dyn Fn(&mut RegistrationEntry)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "root id",
                Box::new(|e| e.spiffe_id = "spiffe://example.org".parse().expect("id")),
            ),
            (
                "reserved",
                Box::new(|e| {
                    e.spiffe_id = "spiffe://example.org/sigil/server/1".parse().expect("id")
                }),
            ),
            (
                "self parent",
                Box::new(|e| e.parent_id = e.spiffe_id.clone()),
            ),
            ("no selectors", Box::new(|e| e.selectors.clear())),
            (
                "too many selectors",
                Box::new(|e| {
                    e.selectors = (0..=SELECTORS_PER_ENTRY_MAX)
                        .map(|i| Selector::new("unix", &format!("uid:{i}")).expect("sel"))
                        .collect()
                }),
            ),
            (
                "ttl",
                Box::new(|e| e.x509_svid_ttl_secs = SVID_TTL_SECS_MAX + 1),
            ),
            (
                "jwt ttl",
                Box::new(|e| e.jwt_svid_ttl_secs = SVID_TTL_SECS_MAX + 1),
            ),
            ("dns", Box::new(|e| e.dns_names = vec!["bad_name".into()])),
            (
                "dns dash",
                Box::new(|e| e.dns_names = vec!["-a.example".into()]),
            ),
            (
                "dns empty label",
                Box::new(|e| e.dns_names = vec!["a..b".into()]),
            ),
            (
                "too many dns",
                Box::new(|e| {
                    e.dns_names = (0..=DNS_NAMES_PER_ENTRY_MAX)
                        .map(|i| format!("h{i}.x"))
                        .collect()
                }),
            ),
            (
                "own td",
                Box::new(|e| {
                    e.federates_with.insert("example.org".parse().expect("td"));
                }),
            ),
            (
                "hint",
                Box::new(|e| e.hint = "h".repeat(HINT_BYTES_MAX + 1)),
            ),
            ("hint ctl", Box::new(|e| e.hint = "a\nb".into())),
        ];
        for (name, mutate) in cases {
            let mut e = sample_entry();
            mutate(&mut e);
            assert!(e.validate().is_err(), "{name} should be rejected");
            // Deserialization runs the same checks.
            let json = serde_json::to_string(&e).expect("ser");
            assert!(
                serde_json::from_str::<RegistrationEntry>(&json).is_err(),
                "{name} (serde)"
            );
        }
    }

    #[test]
    fn matching_is_subset() {
        let e = sample_entry();
        let mut ws: BTreeSet<Selector> = e.selectors.clone();
        assert!(e.matches(&ws));
        ws.insert("unix:user:alice".parse().expect("sel"));
        assert!(e.matches(&ws));
        ws.remove(&"unix:gid:1000".parse().expect("sel"));
        assert!(!e.matches(&ws));
    }

    #[test]
    fn entry_ids() {
        assert_eq!(EntryId::from_random([0xab; 16]).as_str(), "ab".repeat(16));
        assert!("abc-DEF_123".parse::<EntryId>().is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(ENTRY_ID_BYTES_MAX + 1)] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad:?}");
        }
    }
}
