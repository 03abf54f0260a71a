//! In-process services for the benchmarks: a `sigil server` or agent run as a tokio task until
//! told to stop, and the temp dir it leaves.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The future a service runs until: it completes when the service is told to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawns a task on the current tokio runtime.
#[allow(clippy::disallowed_methods)] // a harness runs its services and callers as tasks
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut)
}

/// A service (`node::rt::serve::run_server`, `node::rt::agent::run_agent`) running as a task,
/// named for messages ("node 2", "the agent").
pub struct ServiceTask<E> {
    name: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E> fmt::Debug for ServiceTask<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceTask")
            .field("name", &self.name)
            .field("running", &self.task.is_some())
            .finish()
    }
}

impl<E: fmt::Display + Send + 'static> ServiceTask<E> {
    /// Spawns `run(shutdown)` on the current runtime.
    pub fn spawn<F>(name: impl Into<String>, run: impl FnOnce(Shutdown) -> F) -> ServiceTask<E>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        ServiceTask {
            name: name.into(),
            stop: Some(stop),
            task: Some(spawn(run(shutdown))),
        }
    }

    /// Fails, saying why, if the service has ended.
    pub async fn check_running(&mut self) -> Result<(), String> {
        if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
            let name = &self.name;
            let result = match self.task.take() {
                Some(t) => t.await,
                None => return Err(format!("{name} stopped")),
            };
            return Err(match result {
                Ok(Ok(())) => format!("{name} stopped unexpectedly"),
                Ok(Err(e)) => format!("{name} failed: {e}"),
                Err(e) => format!("{name}'s task failed: {e}"),
            });
        }
        Ok(())
    }

    /// Tells the service to stop (without waiting).
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the service and waits for it, at most `limit`; `Some(problem)` if it did not stop
    /// cleanly.
    pub async fn stop(&mut self, limit: Duration) -> Option<String> {
        self.signal_stop();
        let task = self.task.take()?;
        let name = &self.name;
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(format!("{name} stopped with: {e}")),
            Ok(Err(e)) => Some(format!("{name}'s task failed: {e}")),
            Err(_) => Some(format!("{name} did not stop within {} s", limit.as_secs())),
        }
    }
}

/// Removes `dir`; the problem, if it could not (or it is still there).
pub fn remove_temp_dir(dir: tempfile::TempDir) -> Option<String> {
    let path = dir.path().to_path_buf();
    if let Err(e) = dir.close() {
        Some(format!("removing {}: {e}", path.display()))
    } else if path.exists() {
        Some(format!("{} still exists", path.display()))
    } else {
        None
    }
}
