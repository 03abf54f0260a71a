//! Per-node signing authorities (DESIGN.md §2): the public half of a server node's X.509 CA key or
//! JWT key, as published in the replicated trust bundle. The trust bundle is the union of every
//! node's published authorities. Private keys never appear here.

use serde::{Deserialize, Serialize};

use crate::{Bundle, Error, JwtAuthority, UnixTime, X509Authority};

/// Longest authority ID, in bytes.
pub const AUTHORITY_ID_BYTES_MAX: usize = 128;

/// The public key material of an authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthorityKey {
    /// An X.509 CA certificate (signs X.509-SVIDs).
    X509(X509Authority),
    /// A JWT signing key (signs JWT-SVIDs); its `kid` equals the authority's ID.
    Jwt(JwtAuthority),
}

/// One published authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authority {
    /// Unique ID across the trust domain (for JWT keys: the `kid`).
    pub id: String,
    /// The server node that holds the private key.
    pub node_id: u64,
    /// The public key material.
    pub key: AuthorityKey,
    /// When the key stops being valid (CA `NotAfter`; JWT key expiry).
    pub not_after: UnixTime,
}

impl Authority {
    /// Checks the ID (1-128 bytes of `[A-Za-z0-9._-]`) and that a JWT key's `kid` equals it.
    pub fn validate(&self) -> Result<(), Error> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= AUTHORITY_ID_BYTES_MAX
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            return Err(Error::InvalidBundle {
                reason: "authority id must be 1-128 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
                    .into(),
            });
        }
        match &self.key {
            AuthorityKey::Jwt(j) if j.kid != self.id => Err(Error::InvalidBundle {
                reason: "a JWT authority's kid must equal its id".into(),
            }),
            AuthorityKey::X509(x) if x.cert_der.is_empty() => Err(Error::InvalidBundle {
                reason: "an X.509 authority needs a certificate".into(),
            }),
            _ => Ok(()),
        }
    }
}

/// The SPIFFE bundle made of `authorities` (in the given order), with `spiffe_sequence` and
/// `spiffe_refresh_hint` set.
pub fn bundle_of<'a>(
    authorities: impl IntoIterator<Item = &'a Authority>,
    sequence: u64,
    refresh_hint_secs: u64,
) -> Bundle {
    let mut bundle = Bundle {
        sequence: Some(sequence),
        refresh_hint_secs: Some(refresh_hint_secs),
        ..Bundle::default()
    };
    for a in authorities {
        match &a.key {
            AuthorityKey::X509(x) => bundle.x509_authorities.push(x.clone()),
            AuthorityKey::Jwt(j) => bundle.jwt_authorities.push(j.clone()),
        }
    }
    bundle
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PublicJwk;

    fn ec() -> PublicJwk {
        PublicJwk::Ec {
            crv: "P-256".into(),
            x: vec![1; 32],
            y: vec![2; 32],
        }
    }

    #[test]
    fn bundle_is_the_union_and_round_trips() {
        let x = Authority {
            id: "x509-n1-1".into(),
            node_id: 1,
            key: AuthorityKey::X509(X509Authority {
                cert_der: vec![0x30, 1],
                key: ec(),
            }),
            not_after: UnixTime::from_secs(100),
        };
        let j = Authority {
            id: "jwt-n2-1".into(),
            node_id: 2,
            key: AuthorityKey::Jwt(JwtAuthority {
                kid: "jwt-n2-1".into(),
                key: ec(),
            }),
            not_after: UnixTime::from_secs(100),
        };
        x.validate().expect("valid");
        j.validate().expect("valid");
        let b = bundle_of([&x, &j], 7, 300);
        assert_eq!(b.sequence, Some(7));
        assert_eq!(b.x509_authorities.len(), 1);
        assert_eq!(b.jwt_authorities[0].kid, "jwt-n2-1");
        assert_eq!(Bundle::from_json(b.to_json().as_bytes()).expect("parse"), b);
    }

    #[test]
    fn validate_rejects_bad_ids_and_kid_mismatch() {
        let mut j = Authority {
            id: "k".into(),
            node_id: 1,
            key: AuthorityKey::Jwt(JwtAuthority {
                kid: "other".into(),
                key: ec(),
            }),
            not_after: UnixTime::EPOCH,
        };
        assert!(j.validate().is_err());
        j.id = "other".into();
        assert!(j.validate().is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(AUTHORITY_ID_BYTES_MAX + 1)] {
            j.id = bad.to_owned();
            assert!(j.validate().is_err(), "{bad:?}");
        }
    }
}
