//! The full-state streams (`FetchX509SVID`, `FetchX509Bundles`, `FetchJWTBundles`): what a
//! stream remembers of its last message (a digest), the watcher that builds a new message on
//! every change of the source and sends it when it differs, and opening a stream.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Response, Status};
use wire::Selector;

use super::{recheck, Caller, WorkloadApiService, WorkloadSource};
use crate::rt::unix_attest::{PeerCred, ProcessPin, UnixAttestConfig};

/// A SHA-256 over length-prefixed fields: what a stream remembers of its last message.
pub(super) type Digest = [u8; 32];

pub(super) struct Digester(ring::digest::Context);

impl Digester {
    pub(super) fn new(kind: &[u8]) -> Digester {
        let mut d = Digester(ring::digest::Context::new(&ring::digest::SHA256));
        d.put(kind);
        d
    }
    pub(super) fn put(&mut self, field: &[u8]) {
        self.0.update(&(field.len() as u64).to_be_bytes());
        self.0.update(field);
    }
    pub(super) fn finish(self) -> Digest {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// Builds one stream message from the source's current state.
pub(super) type BuildFn<M> =
    fn(&dyn WorkloadSource, &BTreeSet<Selector>) -> Result<(M, Digest), Status>;

/// A stream's state between messages.
struct Watcher<M> {
    source: Arc<dyn WorkloadSource>,
    cred: PeerCred,
    pin: ProcessPin,
    attest_cfg: Arc<UnixAttestConfig>,
    selectors: BTreeSet<Selector>,
    changes: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    build: BuildFn<M>,
    /// Digest of the last message sent.
    last: Digest,
}

/// Resolves once `stop` holds `true` (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// One step of a stream: the next item, and the state to continue from (`None`: this item is
/// the last one). `None` overall: the stream ends without a further item.
type Step<M> = Option<(Result<M, Status>, Option<Watcher<M>>)>;

impl<M: Send + 'static> Watcher<M> {
    async fn next(mut self) -> Step<M> {
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut self.stop) => {
                    return Some((
                        Err(Status::unavailable("the Workload API is shutting down")),
                        None,
                    ));
                }
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        // The source is gone: end; the client reconnects.
                        return Some((
                            Err(Status::unavailable("the Workload API's source stopped")),
                            None,
                        ));
                    }
                }
            }
            self.changes.borrow_and_update();
            match (self.build)(&*self.source, &self.selectors) {
                Err(status) => return Some((Err(status), None)),
                Ok((_, digest)) if digest == self.last => continue,
                Ok((message, digest)) => {
                    // The process holding the stream must still be the pinned one.
                    if let Err(status) = recheck(self.cred, self.pin, self.attest_cfg.clone()).await
                    {
                        return Some((Err(status), None));
                    }
                    self.last = digest;
                    return Some((Ok(message), Some(self)));
                }
            }
        }
    }
}

/// A server stream of full-state messages (see the module docs).
pub struct FullStateStream<M> {
    step: Option<Pin<Box<dyn Future<Output = Step<M>> + Send>>>,
}

impl<M> std::fmt::Debug for FullStateStream<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FullStateStream")
            .field("ended", &self.step.is_none())
            .finish()
    }
}

impl<M: Send + 'static> Stream for FullStateStream<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(step) = self.step.as_mut() else {
            return Poll::Ready(None);
        };
        match step.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.step = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some((item, next))) => {
                self.step = next
                    .map(|w| Box::pin(w.next()) as Pin<Box<dyn Future<Output = Step<M>> + Send>>);
                Poll::Ready(Some(item))
            }
        }
    }
}

impl WorkloadApiService {
    /// A stream that sends `first`, then a new message whenever the source changes.
    fn watch<M: Send + 'static>(
        &self,
        caller: Caller,
        changes: watch::Receiver<u64>,
        first_digest: Digest,
        first: M,
        build: BuildFn<M>,
    ) -> FullStateStream<M> {
        let watcher = Watcher {
            source: self.source.clone(),
            cred: caller.cred,
            pin: caller.pin,
            attest_cfg: self.attest_cfg.clone(),
            selectors: caller.selectors,
            changes,
            stop: self.stop.subscribe(),
            build,
            last: first_digest,
        };
        FullStateStream {
            step: Some(Box::pin(std::future::ready(Some((
                Ok(first),
                Some(watcher),
            ))))),
        }
    }

    /// First message and stream for the three streaming RPCs.
    pub(super) async fn open<M: Send + 'static>(
        &self,
        caller: Caller,
        what: &'static str,
        build: BuildFn<M>,
    ) -> Result<Response<FullStateStream<M>>, Status> {
        let mut changes = self.source.changes();
        // Anything that changes from here on is seen by the stream.
        changes.borrow_and_update();
        let (first, digest) = match build(&*self.source, &caller.selectors) {
            Ok(built) => built,
            Err(status) => {
                tracing::debug!(pid = ?caller.cred.pid, uid = caller.cred.uid, rpc = what, "refused: {}", status.message());
                return Err(status);
            }
        };
        self.recheck(&caller).await?;
        tracing::debug!(pid = ?caller.cred.pid, uid = caller.cred.uid, rpc = what, "stream opened");
        Ok(Response::new(
            self.watch(caller, changes, digest, first, build),
        ))
    }
}
