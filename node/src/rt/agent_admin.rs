//! The agent's admin socket: `sigil agent health` asks the running agent what it serves and
//! whether it reaches a server (`sigil.admin.v1.AgentAdmin` in `wire/proto/admin.proto`).
//!
//! The socket has mode 0600 like a server's admin socket ([`super::admin::bind_admin_socket`]):
//! the answer names the agent's SPIFFE ID and its server, which other local users need not know.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use wire::admin::agent_admin_client::AgentAdminClient;
use wire::admin::agent_admin_server::{AgentAdmin, AgentAdminServer};
use wire::admin::{AgentHealthRequest, AgentHealthResponse};

use super::admin::{io_text, serve_on_socket, uds_channel, ADMIN_SOCKET_MODE};
use crate::Error;

/// How long `sigil agent health` waits for the agent.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Something that can report an agent's health (the running agent).
pub trait HealthSource: Send + Sync + 'static {
    /// The agent's state now.
    fn health(&self) -> AgentHealthResponse;
}

struct AgentAdminService {
    source: Arc<dyn HealthSource>,
}

#[tonic::async_trait]
impl AgentAdmin for AgentAdminService {
    async fn agent_health(
        &self,
        _request: Request<AgentHealthRequest>,
    ) -> Result<Response<AgentHealthResponse>, Status> {
        Ok(Response::new(self.source.health()))
    }
}

/// Serves the agent admin API on a Unix socket at `path` (mode 0600) until `shutdown`
/// completes, then removes the socket file.
pub async fn serve_agent_admin(
    path: &Path,
    source: Arc<dyn HealthSource>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let routes = tonic::service::Routes::new(AgentAdminServer::new(AgentAdminService { source }));
    serve_on_socket(path, ADMIN_SOCKET_MODE, "agent admin API", routes, shutdown).await
}

/// Connects to a running agent's admin socket; the error says whether the agent runs.
pub async fn connect(path: &Path) -> Result<AgentAdminClient<tonic::transport::Channel>, Error> {
    let endpoint = tonic::transport::Endpoint::from_static("http://sigil-agent-admin.local")
        .timeout(CLIENT_TIMEOUT)
        .connect_timeout(CLIENT_TIMEOUT);
    let channel = uds_channel(path, endpoint).await.map_err(|e| Error::Os {
        what: "cannot reach the agent's admin socket",
        detail: format!(
            "{}: {} (is `sigil agent` running, and is this its admin_socket?)",
            path.display(),
            io_text(&e)
        ),
    })?;
    Ok(AgentAdminClient::new(channel))
}
