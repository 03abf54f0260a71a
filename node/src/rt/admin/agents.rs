//! Attested agents: `ListAgents`, `GetAgent`, `SetAgentBanned` and `EvictAgent`.

use tonic::{Request, Response, Status};
use wire::admin as pb;
use wire::{AgentRecord, AttestationMethod, Command, Outcome, Transport};

use super::{parse_id, unexpected, AdminService};

/// The name of an attestation method, as `sigil agent list` shows it.
pub fn method_name(m: &AttestationMethod) -> &'static str {
    match m {
        AttestationMethod::JoinToken => "join_token",
        AttestationMethod::X509Pop => "x509pop",
        AttestationMethod::Tpm => "tpm",
    }
}

fn agent_to_pb(a: &AgentRecord) -> pb::Agent {
    pb::Agent {
        spiffe_id: a.spiffe_id.to_string(),
        attestation_method: method_name(&a.method).into(),
        selectors: a.selectors.iter().map(|s| s.to_string()).collect(),
        banned: a.banned,
        svid_serial: a.svid_serial.clone(),
        svid_not_after_secs: a.svid_not_after.as_secs(),
        renewed_at_secs: a.renewed_at.as_secs(),
        attested_at_secs: a.attested_at.as_secs(),
    }
}

impl<T: Transport> AdminService<T> {
    pub(super) async fn handle_list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let req = request.into_inner();
        let page_size = self.page_size(req.page_size)?;
        let after = match req.page_token.as_str() {
            "" => None,
            s => Some(parse_id("page_token", s)?),
        };
        let (agents, more) = self.replica.read(|a| {
            let mut page: Vec<pb::Agent> = a
                .state
                .agents_after(after.as_ref())
                .take(page_size + 1)
                .map(agent_to_pb)
                .collect();
            let more = page.len() > page_size;
            page.truncate(page_size);
            (page, more)
        });
        let next_page_token = match agents.last() {
            Some(last) if more => last.spiffe_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            next_page_token,
        }))
    }

    pub(super) async fn handle_get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = parse_id("spiffe_id", &request.into_inner().spiffe_id)?;
        self.replica
            .read(|a| a.state.agent(&id).map(agent_to_pb))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("agent {id} is not attested")))
    }

    pub(super) async fn handle_set_agent_banned(
        &self,
        request: Request<pb::SetAgentBannedRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let req = request.into_inner();
        let spiffe_id = parse_id("spiffe_id", &req.spiffe_id)?;
        let cmd = Command::SetAgentBanned {
            spiffe_id: spiffe_id.clone(),
            banned: req.banned,
        };
        match self.write(cmd).await? {
            Outcome::Agent(agent) => {
                if req.banned {
                    tracing::warn!(agent = %spiffe_id, "agent banned: every node refuses it everything once it applied the ban");
                } else {
                    tracing::info!(agent = %spiffe_id, "agent unbanned");
                }
                Ok(Response::new(agent_to_pb(&agent)))
            }
            other => Err(unexpected(&other)),
        }
    }

    pub(super) async fn handle_evict_agent(
        &self,
        request: Request<pb::EvictAgentRequest>,
    ) -> Result<Response<pb::EvictAgentResponse>, Status> {
        let spiffe_id = parse_id("spiffe_id", &request.into_inner().spiffe_id)?;
        match self
            .write(Command::EvictAgent {
                spiffe_id: spiffe_id.clone(),
            })
            .await?
        {
            Outcome::Done => {}
            other => return Err(unexpected(&other)),
        }
        tracing::info!(agent = %spiffe_id, "agent evicted: it must attest again");
        Ok(Response::new(pb::EvictAgentResponse {}))
    }
}
