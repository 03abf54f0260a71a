//! The storage seam (DESIGN.md §3): a small ordered key-value store that Raft's log, vote and
//! state machine are written through. `SledKv` (production) and `MemKv` (tests and the simulator)
//! implement it.
//!
//! Contract: `put_batch` applies all its operations atomically but durably only after the next
//! completed `flush`; a crash may lose any write not yet flushed, never a flushed one.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use crate::Error;

/// One write in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` (no error if absent).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// An ordered key-value store.
pub trait Kv: Clone + Send + Sync + 'static {
    /// Applies `ops` atomically (visible to reads at once, durable after [`Kv::flush`]).
    fn put_batch(&self, ops: Vec<KvOp>) -> Result<(), Error>;
    /// Makes every earlier write durable.
    fn flush(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// Pairs with `start <= key < end` (`end = None`: no upper bound), in key order, at most
    /// `limit` of them.
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Pairs, Error>;
    /// Removes every key with `start <= key < end` (`end = None`: no upper bound).
    fn delete_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<(), Error>;
}

#[derive(Debug, Default)]
struct MemState {
    /// What reads see.
    live: BTreeMap<Vec<u8>, Vec<u8>>,
    /// What survives a crash: `live` as of the last flush.
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// An in-memory [`Kv`] with crash semantics: [`MemKv::crash`] drops every unflushed write.
#[derive(Debug, Clone, Default)]
pub struct MemKv {
    state: Arc<Mutex<MemState>>,
}

impl MemKv {
    /// An empty store.
    pub fn new() -> MemKv {
        MemKv::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut MemState) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Simulates a power loss: reads now see only what was flushed.
    pub fn crash(&self) {
        self.with(|s| s.live = s.durable.clone());
    }
}

fn upper(end: Option<&[u8]>) -> Bound<Vec<u8>> {
    end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec()))
}

impl Kv for MemKv {
    fn put_batch(&self, ops: Vec<KvOp>) -> Result<(), Error> {
        self.with(|s| {
            for op in ops {
                match op {
                    KvOp::Put { key, value } => {
                        s.live.insert(key, value);
                    }
                    KvOp::Delete { key } => {
                        s.live.remove(&key);
                    }
                }
            }
        });
        Ok(())
    }

    fn flush(&self) -> impl Future<Output = Result<(), Error>> + Send {
        self.with(|s| s.durable = s.live.clone());
        std::future::ready(Ok(()))
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Pairs, Error> {
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        Ok(self.with(|s| {
            s.live
                .range((Bound::Included(start.to_vec()), upper(end)))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    fn delete_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<(), Error> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        self.with(|s| {
            let doomed: Vec<Vec<u8>> = s
                .live
                .range((Bound::Included(start.to_vec()), upper(end)))
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                s.live.remove(&k);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> KvOp {
        KvOp::Put {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        }
    }

    fn keys(kv: &MemKv, start: &str, end: Option<&str>) -> Vec<String> {
        kv.range(start.as_bytes(), end.map(str::as_bytes), usize::MAX)
            .expect("range")
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).expect("utf8"))
            .collect()
    }

    #[tokio::test]
    async fn ordered_ranges_limits_and_deletes() {
        let kv = MemKv::new();
        kv.put_batch(vec![
            put("b", "2"),
            put("a", "1"),
            put("c", "3"),
            put("d", "4"),
        ])
        .expect("put");
        assert_eq!(keys(&kv, "a", None), ["a", "b", "c", "d"]);
        assert_eq!(keys(&kv, "b", Some("d")), ["b", "c"]);
        assert_eq!(keys(&kv, "d", Some("b")), Vec::<String>::new());
        assert_eq!(kv.range(b"a", None, 2).expect("range").len(), 2);
        kv.delete_range(b"b", Some(b"d")).expect("delete");
        assert_eq!(keys(&kv, "", None), ["a", "d"]);
        kv.put_batch(vec![KvOp::Delete { key: b"a".to_vec() }])
            .expect("delete");
        assert_eq!(keys(&kv, "", None), ["d"]);
    }

    #[tokio::test]
    async fn crash_loses_exactly_the_unflushed_writes() {
        let kv = MemKv::new();
        kv.put_batch(vec![put("kept", "1")]).expect("put");
        kv.flush().await.expect("flush");
        kv.put_batch(vec![
            put("lost", "2"),
            KvOp::Delete {
                key: b"kept".to_vec(),
            },
        ])
        .expect("put");
        assert_eq!(keys(&kv, "", None), ["lost"]);
        kv.crash();
        assert_eq!(keys(&kv, "", None), ["kept"]);
    }
}
