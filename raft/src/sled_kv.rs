//! [`SledKv`]: the production [`Kv`] on a sled database.
//!
//! sled makes writes durable only on `flush` (its background flusher runs every 500 ms by
//! default), which is exactly the [`Kv`] contract: [`Kv::flush`] awaits `flush_async`.

use std::future::Future;
use std::path::Path;

use crate::kv::{Kv, KvOp, Pairs};
use crate::Error;

/// A sled database behind the [`Kv`] seam.
#[derive(Debug, Clone)]
pub struct SledKv {
    db: sled::Db,
}

fn storage(what: &str, e: sled::Error) -> Error {
    Error::Storage(format!("{what}: {e}"))
}

impl SledKv {
    /// Opens (or creates) the database in directory `path`.
    pub fn open(path: &Path) -> Result<SledKv, Error> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|e| storage(&format!("opening {}", path.display()), e))?;
        Ok(SledKv { db })
    }
}

impl Kv for SledKv {
    fn put_batch(&self, ops: Vec<KvOp>) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                KvOp::Put { key, value } => batch.insert(key, value),
                KvOp::Delete { key } => batch.remove(key),
            }
        }
        self.db.apply_batch(batch).map_err(|e| storage("write", e))
    }

    fn flush(&self) -> impl Future<Output = Result<(), Error>> + Send {
        let db = self.db.clone();
        async move {
            db.flush_async()
                .await
                .map(|_| ())
                .map_err(|e| storage("flush", e))
        }
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Pairs, Error> {
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        let iter = match end {
            Some(end) => self.db.range(start..end),
            None => self.db.range(start..),
        };
        iter.take(limit)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| storage("read", e))
            })
            .collect()
    }

    fn delete_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<(), Error> {
        let doomed = self.range(start, end, usize::MAX)?;
        let ops = doomed
            .into_iter()
            .map(|(key, _)| KvOp::Delete { key })
            .collect();
        self.put_batch(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open, LogStore, StateMachineStore};
    use crate::types::{StorageError, TypeConfig};
    use openraft::testing::{StoreBuilder, Suite};

    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore<SledKv>, StateMachineStore<SledKv>, tempfile::TempDir>
        for SledBuilder
    {
        async fn build(
            &self,
        ) -> Result<
            (
                tempfile::TempDir,
                LogStore<SledKv>,
                StateMachineStore<SledKv>,
            ),
            StorageError,
        > {
            let dir = tempfile::tempdir().map_err(|e| {
                openraft::StorageIOError::write(openraft::AnyError::error(e.to_string()))
            })?;
            let kv = SledKv::open(dir.path()).map_err(|e| {
                openraft::StorageIOError::write(openraft::AnyError::error(e.to_string()))
            })?;
            let (log, sm) = open(kv)?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_suite_passes_on_sled() {
        Suite::test_all(SledBuilder).expect("openraft storage suite");
    }

    #[tokio::test]
    async fn writes_survive_reopen_after_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let kv = SledKv::open(dir.path()).expect("open");
            kv.put_batch(vec![
                KvOp::Put {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                },
                KvOp::Put {
                    key: b"b".to_vec(),
                    value: b"2".to_vec(),
                },
            ])
            .expect("put");
            kv.delete_range(b"b", None).expect("delete");
            kv.flush().await.expect("flush");
        }
        let kv = SledKv::open(dir.path()).expect("reopen");
        let all = kv.range(b"", None, 10).expect("range");
        assert_eq!(all, vec![(b"a".to_vec(), b"1".to_vec())]);
        assert!(SledKv::open(&dir.path().join("a-file-not-a-dir\0")).is_err());
    }
}
