//! Registrations as the clients saw them (the oracle) against every node's applied state.

use std::collections::BTreeSet;

use raft::State;
use wire::EntryId;

/// What happened to writes, as the clients saw it.
#[derive(Debug, Default)]
pub struct Oracle {
    /// Entries some client tried to create.
    pub create_attempted: BTreeSet<EntryId>,
    /// Creates acknowledged as successful.
    pub create_acked: BTreeSet<EntryId>,
    /// Entries some client tried to delete.
    pub delete_attempted: BTreeSet<EntryId>,
    /// Deletes acknowledged (the entry was removed).
    pub delete_acked: BTreeSet<EntryId>,
    /// Writes that ended in `NoQuorum` or another write error.
    pub write_errors: u64,
}

impl Oracle {
    /// Checks node `id`'s state: acknowledged creates that nobody tried to delete are present,
    /// acknowledged deletes are absent, and nothing nobody wrote exists.
    pub fn check(&self, id: u64, state: &State, out: &mut Vec<String>) {
        for eid in &self.create_acked {
            if !self.delete_attempted.contains(eid) && state.entry(eid).is_none() {
                out.push(format!("node {id} lost acknowledged entry {eid}"));
            }
        }
        for eid in &self.delete_acked {
            if state.entry(eid).is_some() {
                out.push(format!("node {id} still has deleted entry {eid}"));
            }
        }
        for e in state.entries() {
            if !self.create_attempted.contains(&e.id) {
                out.push(format!("node {id} has phantom entry {}", e.id));
            }
        }
    }
}
