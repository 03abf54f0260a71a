//! Every SVID an agent received: spec-form for its entry, signed by a key that was published
//! (in the issuing node's applied bundle) before it signed, ending no later than its CA; and
//! later, no authority leaves the bundle while an SVID it signed is unexpired.

use attest::x509::{not_after, validate_x509_svid};
use wire::{Bundle, TrustDomain, UnixTime};

use super::Delivered;

/// The SVID checker.
#[derive(Debug)]
pub struct SvidChecker {
    td: TrustDomain,
    delivered: Vec<Delivered>,
    /// Violations found.
    pub violations: Vec<String>,
}

impl SvidChecker {
    /// A checker for SVIDs of `td`.
    pub fn new(td: TrustDomain) -> SvidChecker {
        SvidChecker {
            td,
            delivered: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// SVIDs delivered so far.
    pub fn count(&self) -> usize {
        self.delivered.len()
    }

    /// Checks one delivered SVID and keeps it for [`SvidChecker::check_retained`].
    pub fn on_delivered(&mut self, d: &Delivered) {
        let at = |n: u64| format!("from node {n} at {:.3} s", d.at.as_secs_f64());
        // Spec form (one URI SAN, not a CA, digital signature only) and chaining to what the
        // issuing node had applied: its key was published before it signed.
        match validate_x509_svid(
            &[d.cert_der.as_slice()],
            &(self.td.clone(), d.node_bundle.clone()),
            d.node_wall,
        ) {
            Ok(id) if id != d.entry.spiffe_id => self.violations.push(format!(
                "SVID {} names {id}, but entry {} is {}",
                at(d.node),
                d.entry.id,
                d.entry.spiffe_id
            )),
            Ok(_) => {}
            Err(e) => self.violations.push(format!(
                "SVID {} for {} does not validate against the node's applied bundle: {e}",
                at(d.node),
                d.entry.spiffe_id
            )),
        }
        // NotAfter within the signing CA's: find the authority that signed it.
        let leaf_end = not_after(&d.cert_der).unwrap_or(UnixTime::EPOCH);
        let signer = d.node_bundle.x509_authorities.iter().find(|a| {
            let one = Bundle {
                x509_authorities: vec![(*a).clone()],
                ..Bundle::default()
            };
            validate_x509_svid(
                &[d.cert_der.as_slice()],
                &(self.td.clone(), one),
                d.node_wall,
            )
            .is_ok()
        });
        if let Some(ca) = signer {
            let ca_end = not_after(&ca.cert_der).unwrap_or(UnixTime::EPOCH);
            if leaf_end > ca_end {
                self.violations.push(format!(
                    "SVID {} ends at {leaf_end:?}, after its CA ({ca_end:?})",
                    at(d.node)
                ));
            }
        }
        self.delivered.push(d.clone());
    }

    /// Every delivered SVID still unexpired at `wall` chains to `bundle` (an authority leaves
    /// the bundle only after every SVID it signed expired). `margin` tolerates the skew of the
    /// clock that decided the prune.
    pub fn check_retained(&mut self, what: &str, bundle: &Bundle, wall: UnixTime) {
        let mut found = Vec::new();
        for d in &self.delivered {
            let end = not_after(&d.cert_der).unwrap_or(UnixTime::EPOCH);
            if end <= wall {
                continue;
            }
            if let Err(e) = validate_x509_svid(
                &[d.cert_der.as_slice()],
                &(self.td.clone(), bundle.clone()),
                wall,
            ) {
                found.push(format!(
                    "an SVID from node {} for {} valid until {end:?} no longer chains to {what}: {e}",
                    d.node, d.entry.spiffe_id
                ));
            }
        }
        self.violations.extend(found);
    }
}
