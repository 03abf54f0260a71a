//! What workloads were served: only entries they are entitled to (every selector of the entry
//! holds for the workload, and the entry is the serving agent's), each SVID naming its entry and
//! valid at the agent's clock; and after heal, an SVID for every entitled entry that verifies
//! against the converged bundle.

use std::collections::BTreeSet;

use attest::x509::validate_x509_svid;
use wire::{Bundle, RegistrationEntry, Selector, SpiffeId, TrustDomain, UnixTime};

/// One serve: what a workload got from its agent.
#[derive(Debug)]
pub struct Serve<'a> {
    /// The serving agent.
    pub agent: &'a SpiffeId,
    /// The workload's selectors.
    pub selectors: &'a BTreeSet<Selector>,
    /// `(entry, leaf)` pairs served.
    pub served: Vec<(&'a RegistrationEntry, &'a [u8])>,
    /// The agent's bundle.
    pub bundle: &'a Bundle,
    /// The agent's wall clock.
    pub wall: UnixTime,
}

/// The workload checker.
#[derive(Debug)]
pub struct WorkloadChecker {
    td: TrustDomain,
    /// Serves observed.
    pub serves: u64,
    /// Violations found.
    pub violations: Vec<String>,
}

impl WorkloadChecker {
    /// A checker for workloads of `td`.
    pub fn new(td: TrustDomain) -> WorkloadChecker {
        WorkloadChecker {
            td,
            serves: 0,
            violations: Vec::new(),
        }
    }

    /// Checks one serve (safety: entitlement and validity).
    pub fn on_serve(&mut self, s: &Serve<'_>) {
        self.serves += 1;
        for (entry, leaf) in &s.served {
            if !entry.selectors.is_subset(s.selectors) {
                self.violations.push(format!(
                    "agent {} served {} to a workload that lacks its selectors",
                    s.agent, entry.spiffe_id
                ));
            }
            if entry.parent_id != *s.agent {
                self.violations.push(format!(
                    "agent {} served {}, an entry of {}",
                    s.agent, entry.spiffe_id, entry.parent_id
                ));
            }
            match validate_x509_svid(&[*leaf], &(self.td.clone(), s.bundle.clone()), s.wall) {
                Ok(id) if id == entry.spiffe_id => {}
                Ok(id) => self.violations.push(format!(
                    "agent {} served an SVID for {id} as {}",
                    s.agent, entry.spiffe_id
                )),
                Err(e) => self.violations.push(format!(
                    "agent {} served an SVID for {} that does not validate against its bundle: {e}",
                    s.agent, entry.spiffe_id
                )),
            }
        }
    }

    /// Liveness after heal: the workload holds an SVID for every entry in `entitled` that
    /// verifies against `converged`.
    pub fn check_settled(
        &mut self,
        s: &Serve<'_>,
        entitled: &[&RegistrationEntry],
        converged: &Bundle,
    ) -> Result<(), String> {
        for entry in entitled {
            let held = s.served.iter().find(|(e, _)| e.id == entry.id);
            let why = match held {
                None => "none held".to_string(),
                Some((_, leaf)) => {
                    match validate_x509_svid(
                        &[*leaf],
                        &(self.td.clone(), converged.clone()),
                        s.wall,
                    ) {
                        Ok(_) => continue,
                        Err(e) => e.to_string(),
                    }
                }
            };
            return Err(format!(
                "a workload of agent {} holds no SVID for {} that verifies against the converged bundle ({why})",
                s.agent, entry.spiffe_id
            ));
        }
        Ok(())
    }
}
