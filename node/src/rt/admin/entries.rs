//! Registration entries: `CreateEntries`, `UpdateEntry`, `DeleteEntries`, `GetEntry` and
//! `ListEntries`, and parsing a request entry into a checked [`RegistrationEntry`].

use std::collections::BTreeSet;

use rand_core::RngCore;
use tonic::{Request, Response, Status};
use wire::admin as pb;
use wire::command::BATCH_ENTRIES_MAX;
use wire::entry::SELECTORS_PER_ENTRY_MAX;
use wire::{Command, EntryId, Outcome, RegistrationEntry, Selector, Transport, TrustDomain};

use super::{command_status, invalid, one_line, parse_id, unexpected, AdminService};

/// Most DNS names / federated trust domains accepted in one request entry before parsing.
const LIST_FIELD_MAX: usize = 64;

fn parse_selectors(texts: &[String]) -> Result<BTreeSet<Selector>, Status> {
    if texts.len() > SELECTORS_PER_ENTRY_MAX {
        return Err(invalid(format!(
            "at most {SELECTORS_PER_ENTRY_MAX} selectors are allowed"
        )));
    }
    texts
        .iter()
        .map(|s| s.parse::<Selector>().map_err(|e| invalid(e.to_string())))
        .collect()
}

fn parse_entry_id(text: &str) -> Result<EntryId, Status> {
    text.parse::<EntryId>()
        .map_err(|e| invalid(format!("entry id {:?}: {e}", one_line(text))))
}

/// The protobuf form of an entry.
pub fn entry_to_pb(e: &RegistrationEntry) -> pb::Entry {
    pb::Entry {
        id: e.id.to_string(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        x509_svid_ttl_secs: e.x509_svid_ttl_secs,
        jwt_svid_ttl_secs: e.jwt_svid_ttl_secs,
        dns_names: e.dns_names.clone(),
        federates_with: e.federates_with.iter().map(ToString::to_string).collect(),
        admin: e.admin,
        downstream: e.downstream,
        hint: e.hint.clone(),
        revision: e.revision,
        created_at_secs: e.created_at_secs,
        expires_at_secs: e.expires_at_secs,
    }
}

impl<T: Transport> AdminService<T> {
    fn new_entry_id(&self) -> EntryId {
        let mut bits = [0u8; 16];
        self.env.rng("entry-id").fill_bytes(&mut bits);
        EntryId::from_random(bits)
    }

    /// Parses and checks a request entry. `id` is the entry's ID (assigned or given).
    fn parse_entry(&self, e: &pb::Entry, id: EntryId) -> Result<RegistrationEntry, Status> {
        let spiffe_id = parse_id("spiffe_id", &e.spiffe_id)?;
        self.in_trust_domain("spiffe_id", &spiffe_id)?;
        let parent_id = parse_id("parent_id", &e.parent_id)?;
        self.in_trust_domain("parent_id", &parent_id)?;
        let selectors = parse_selectors(&e.selectors)?;
        if e.dns_names.len() > LIST_FIELD_MAX || e.federates_with.len() > LIST_FIELD_MAX {
            return Err(invalid("too many DNS names or federated trust domains"));
        }
        let federates_with = e
            .federates_with
            .iter()
            .map(|td| {
                td.parse::<TrustDomain>()
                    .map_err(|err| invalid(format!("federates_with: {err}")))
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        let entry = RegistrationEntry {
            id,
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl_secs: e.x509_svid_ttl_secs,
            jwt_svid_ttl_secs: e.jwt_svid_ttl_secs,
            dns_names: e.dns_names.clone(),
            federates_with,
            admin: e.admin,
            downstream: e.downstream,
            hint: e.hint.clone(),
            revision: 0,
            created_at_secs: self.env.wall().as_secs(),
            expires_at_secs: e.expires_at_secs,
        };
        entry.validate().map_err(|err| invalid(err.to_string()))?;
        Ok(entry)
    }

    pub(super) async fn handle_create_entries(
        &self,
        request: Request<pb::CreateEntriesRequest>,
    ) -> Result<Response<pb::CreateEntriesResponse>, Status> {
        let req = request.into_inner();
        if req.entries.is_empty() {
            return Err(invalid("no entries given"));
        }
        if req.entries.len() > BATCH_ENTRIES_MAX {
            return Err(invalid(format!(
                "at most {BATCH_ENTRIES_MAX} entries per request"
            )));
        }
        // Each request entry either fails here or goes into the batch, in order.
        let mut slots: Vec<Result<(), Status>> = Vec::with_capacity(req.entries.len());
        let mut batch = Vec::new();
        for e in &req.entries {
            let parsed = if e.id.is_empty() {
                Ok(self.new_entry_id())
            } else {
                parse_entry_id(&e.id)
            }
            .and_then(|id| self.parse_entry(e, id));
            match parsed {
                Ok(entry) => {
                    batch.push(entry);
                    slots.push(Ok(()));
                }
                Err(status) => slots.push(Err(status)),
            }
        }
        let mut created = Vec::new().into_iter();
        if !batch.is_empty() {
            let expected = batch.len();
            match self
                .write(Command::CreateEntries { entries: batch })
                .await?
            {
                Outcome::Created(results) if results.len() == expected => {
                    created = results.into_iter();
                }
                other => return Err(unexpected(&other)),
            }
        }
        let results = slots
            .into_iter()
            .map(|slot| {
                let result = match slot {
                    Err(status) => Err(status),
                    Ok(()) => match created.next() {
                        Some(Ok(entry)) => Ok(entry_to_pb(&entry)),
                        Some(Err(e)) => Err(command_status(&e)),
                        None => Err(Status::internal("missing result")),
                    },
                };
                pb::EntryResult {
                    result: Some(match result {
                        Ok(entry) => pb::entry_result::Result::Entry(entry),
                        Err(status) => pb::entry_result::Result::Error(pb::EntryError {
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        }),
                    }),
                }
            })
            .collect();
        Ok(Response::new(pb::CreateEntriesResponse { results }))
    }

    pub(super) async fn handle_update_entry(
        &self,
        request: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let req = request.into_inner();
        let e = req.entry.ok_or_else(|| invalid("entry is required"))?;
        if e.id.is_empty() {
            return Err(invalid("entry id is required"));
        }
        let entry = self.parse_entry(&e, parse_entry_id(&e.id)?)?;
        match self
            .write(Command::UpdateEntry {
                entry,
                expected_revision: req.expected_revision,
            })
            .await?
        {
            Outcome::Updated(stored) => Ok(Response::new(entry_to_pb(&stored))),
            other => Err(unexpected(&other)),
        }
    }

    pub(super) async fn handle_delete_entries(
        &self,
        request: Request<pb::DeleteEntriesRequest>,
    ) -> Result<Response<pb::DeleteEntriesResponse>, Status> {
        let req = request.into_inner();
        if req.ids.is_empty() {
            return Err(invalid("no entry ids given"));
        }
        if req.ids.len() > BATCH_ENTRIES_MAX {
            return Err(invalid(format!(
                "at most {BATCH_ENTRIES_MAX} entry ids per request"
            )));
        }
        let ids = req
            .ids
            .iter()
            .map(|id| parse_entry_id(id))
            .collect::<Result<Vec<_>, _>>()?;
        match self.write(Command::DeleteEntries { ids }).await? {
            Outcome::Deleted { deleted, missing } => Ok(Response::new(pb::DeleteEntriesResponse {
                deleted: u64::try_from(deleted).unwrap_or(u64::MAX),
                missing: missing.iter().map(ToString::to_string).collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    pub(super) async fn handle_get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id = parse_entry_id(&request.into_inner().id)?;
        self.replica
            .read(|a| a.state.entry(&id).map(entry_to_pb))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("entry {id} not found")))
    }

    pub(super) async fn handle_list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let req = request.into_inner();
        let page_size = self.page_size(req.page_size)?;
        let parent = match req.parent_id.as_str() {
            "" => None,
            s => Some(parse_id("parent_id", s)?),
        };
        let spiffe_id = match req.spiffe_id.as_str() {
            "" => None,
            s => Some(parse_id("spiffe_id", s)?),
        };
        let selectors = parse_selectors(&req.selectors)?;
        let after = match req.page_token.as_str() {
            "" => None,
            s => Some(
                s.parse::<EntryId>()
                    .map_err(|_| invalid("page_token is not a token from a previous page"))?,
            ),
        };
        let (mut page, more) = self.replica.read(|applied| {
            let state = &applied.state;
            // Start from the narrowest index; every candidate list is in ID order.
            let candidates: Box<dyn Iterator<Item = &RegistrationEntry>> = if let Some(p) = &parent
            {
                Box::new(state.entries_by_parent(p).into_iter())
            } else if let Some(s) = selectors.iter().next() {
                Box::new(state.entries_by_selector(s).into_iter())
            } else {
                Box::new(state.entries())
            };
            let mut page: Vec<pb::Entry> = candidates
                .filter(|e| after.as_ref().is_none_or(|a| e.id > *a))
                .filter(|e| spiffe_id.as_ref().is_none_or(|s| e.spiffe_id == *s))
                .filter(|e| parent.as_ref().is_none_or(|p| e.parent_id == *p))
                .filter(|e| selectors.is_subset(&e.selectors))
                .take(page_size + 1)
                .map(entry_to_pb)
                .collect();
            let more = page.len() > page_size;
            page.truncate(page_size);
            (page, more)
        });
        let next_page_token = if more {
            page.last().map(|e| e.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        page.shrink_to_fit();
        Ok(Response::new(pb::ListEntriesResponse {
            entries: page,
            next_page_token,
        }))
    }
}
