//! No private key travels: every frame the network delivers (Raft traffic, log entries
//! included) and every node API answer is scanned for the private scalar of any key any
//! simulated node or agent generated.

use std::sync::{Arc, Mutex};

use crate::env::SimEnv;

/// The secret scanner (shared with the network's tap).
#[derive(Debug, Default)]
pub struct SecretScan {
    envs: Mutex<Vec<Arc<SimEnv>>>,
    found: Mutex<Vec<String>>,
    scanned_bytes: Mutex<u64>,
}

impl SecretScan {
    /// Adds an environment whose keys must never travel.
    pub fn watch(&self, env: Arc<SimEnv>) {
        self.envs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(env);
    }

    /// Scans `bytes`, described by `what` in a violation.
    pub fn scan(&self, what: impl FnOnce() -> String, bytes: &[u8]) {
        *self.scanned_bytes.lock().unwrap_or_else(|p| p.into_inner()) += bytes.len() as u64;
        let leaked = self
            .envs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|env| env.leaked_in(bytes));
        if leaked {
            self.found
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("private key bytes in {}", what()));
        }
    }

    /// Violations found.
    pub fn violations(&self) -> Vec<String> {
        self.found.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Bytes scanned so far.
    pub fn scanned_bytes(&self) -> u64 {
        *self.scanned_bytes.lock().unwrap_or_else(|p| p.into_inner())
    }
}
