//! Trust bundles as validation sees them ([`BundleSource`]: a bundle per trust domain, always
//! looked up by the *subject's* trust domain), and the assembly of a trust domain's bundle from
//! its published per-node authorities ([`PublishedAuthorities`]).

use std::collections::BTreeMap;

use wire::{bundle_of, Authority, Bundle, BundleMap, TrustDomain, UnixTime};

use crate::Error;

/// Bundles by trust domain. SPIFFE bundles carry no trust domain inside, so they are always
/// stored and found by name (SPIFFE_Trust_Domain_and_Bundle.md §3).
pub trait BundleSource {
    /// The bundle of `td`, if known.
    fn bundle(&self, td: &TrustDomain) -> Option<&Bundle>;
}

impl BundleSource for BundleMap {
    fn bundle(&self, td: &TrustDomain) -> Option<&Bundle> {
        self.0.get(td)
    }
}

impl BundleSource for BTreeMap<TrustDomain, Bundle> {
    fn bundle(&self, td: &TrustDomain) -> Option<&Bundle> {
        self.get(td)
    }
}

/// One trust domain's bundle.
impl BundleSource for (TrustDomain, Bundle) {
    fn bundle(&self, td: &TrustDomain) -> Option<&Bundle> {
        (self.0 == *td).then_some(&self.1)
    }
}

/// One trust domain's bundle, borrowed.
impl BundleSource for (&TrustDomain, &Bundle) {
    fn bundle(&self, td: &TrustDomain) -> Option<&Bundle> {
        (*self.0 == *td).then_some(self.1)
    }
}

/// The authorities published in a trust domain, and the bundle they make. `spiffe_sequence`
/// increases by one on every change of contents and never otherwise (SPIFFE_Trust_Domain_and_
/// Bundle.md §4.1.1); the replicated state machine can hold one of these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishedAuthorities {
    authorities: BTreeMap<String, Authority>,
    sequence: u64,
}

impl PublishedAuthorities {
    /// No authorities, sequence 0.
    pub fn new() -> PublishedAuthorities {
        PublishedAuthorities::default()
    }

    /// Adds (or replaces) an authority after [`Authority::validate`]. Returns whether the
    /// contents changed; a replay of the same authority changes nothing.
    pub fn publish(&mut self, authority: Authority) -> Result<bool, Error> {
        authority.validate()?;
        if self.authorities.get(&authority.id) == Some(&authority) {
            return Ok(false);
        }
        self.authorities.insert(authority.id.clone(), authority);
        self.sequence += 1;
        Ok(true)
    }

    /// Removes an authority; returns whether it was there.
    pub fn prune(&mut self, id: &str) -> bool {
        let removed = self.authorities.remove(id).is_some();
        if removed {
            self.sequence += 1;
        }
        removed
    }

    /// Removes every authority that expired at or before `wall - grace`; returns their IDs.
    pub fn prune_expired(&mut self, wall: UnixTime, grace: std::time::Duration) -> Vec<String> {
        let cutoff = wall.saturating_sub(grace);
        let expired: Vec<String> = self
            .authorities
            .values()
            .filter(|a| a.not_after <= cutoff)
            .map(|a| a.id.clone())
            .collect();
        for id in &expired {
            self.prune(id);
        }
        expired
    }

    /// The published authority with this ID.
    pub fn get(&self, id: &str) -> Option<&Authority> {
        self.authorities.get(id)
    }

    /// Whether an authority with this ID is published.
    pub fn contains(&self, id: &str) -> bool {
        self.authorities.contains_key(id)
    }

    /// The current `spiffe_sequence`.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The SPIFFE bundle (authorities in ID order).
    pub fn bundle(&self, refresh_hint_secs: u64) -> Bundle {
        bundle_of(self.authorities.values(), self.sequence, refresh_hint_secs)
    }
}

/// The bundle hash a newcomer pins (`sigil bundle show --hash`): lowercase hex SHA-256 over the
/// bundle's X.509 authorities — each CA certificate's DER preceded by its length as a 4-byte
/// big-endian number, in ascending byte order of the DER. It names the set of CAs, so it does
/// not change with the bundle's sequence, refresh hint or JWT keys, and it changes whenever a CA
/// is added or pruned.
pub fn bundle_sha256(bundle: &Bundle) -> String {
    let mut ders: Vec<&[u8]> = bundle
        .x509_authorities
        .iter()
        .map(|a| a.cert_der.as_slice())
        .collect();
    ders.sort_unstable();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for der in ders {
        let len = u32::try_from(der.len()).unwrap_or(u32::MAX);
        ctx.update(&len.to_be_bytes());
        ctx.update(der);
    }
    crate::hex(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{PublicJwk, X509Authority};

    fn ca(der: &[u8]) -> X509Authority {
        X509Authority {
            cert_der: der.to_vec(),
            key: PublicJwk::Okp {
                crv: "Ed25519".into(),
                x: vec![0; 32],
            },
        }
    }

    #[test]
    fn bundle_hash_names_the_set_of_cas() {
        let a = Bundle {
            sequence: Some(1),
            x509_authorities: vec![ca(b"one"), ca(b"two")],
            ..Bundle::default()
        };
        let b = Bundle {
            sequence: Some(7),
            refresh_hint_secs: Some(60),
            x509_authorities: vec![ca(b"two"), ca(b"one")],
            ..Bundle::default()
        };
        assert_eq!(bundle_sha256(&a), bundle_sha256(&b));
        assert_eq!(bundle_sha256(&a).len(), 64);
        let c = Bundle {
            x509_authorities: vec![ca(b"one")],
            ..Bundle::default()
        };
        assert_ne!(bundle_sha256(&a), bundle_sha256(&c));
        // Length prefixes keep ("on","etwo") apart from ("one","two").
        let d = Bundle {
            x509_authorities: vec![ca(b"on"), ca(b"etwo")],
            ..Bundle::default()
        };
        assert_ne!(bundle_sha256(&a), bundle_sha256(&d));
    }
}
