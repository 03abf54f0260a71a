//! The JWT side of the Workload API: `FetchJWTSVID`, `ValidateJWTSVID` (with the claims as
//! protobuf values) and the `FetchJWTBundles` message.

use std::collections::{BTreeMap, BTreeSet};

use tonic::{Request, Response, Status};
use wire::workload::{
    JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse,
};
use wire::{Selector, SpiffeId, UnixTime};

use super::stream::{Digest, Digester};
use super::{
    bundle_key, check_header, federated, unique_hints, WorkloadApiService, WorkloadJwt,
    WorkloadSource, AUDIENCES_MAX, NO_IDENTITY,
};

impl WorkloadApiService {
    /// `FetchJWTSVID`.
    pub(super) async fn handle_fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(request.metadata())?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.audience.len() > AUDIENCES_MAX {
            return Err(Status::invalid_argument(format!(
                "at most {AUDIENCES_MAX} audiences may be requested"
            )));
        }
        if req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("an audience must not be empty"));
        }
        let wanted: Option<SpiffeId> =
            match req.spiffe_id.as_str() {
                "" => None,
                text => Some(text.parse().map_err(|e: wire::Error| {
                    Status::invalid_argument(format!("spiffe_id: {e}"))
                })?),
            };
        let audience = req.audience.clone();
        let caller = self.caller(&request).await?;
        let svids = self
            .source
            .jwt_svids(&caller.selectors, audience, wanted.clone())
            .await?;
        let svids: Vec<WorkloadJwt> = svids
            .into_iter()
            .filter(|s| wanted.as_ref().is_none_or(|w| *w == s.spiffe_id))
            .collect();
        let svids = unique_hints(svids, |s| &s.hint);
        if svids.is_empty() {
            tracing::debug!(pid = ?caller.cred.pid, uid = caller.cred.uid, "FetchJWTSVID: no identity");
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        self.recheck(&caller).await?;
        Ok(Response::new(JwtsvidResponse {
            svids: svids
                .into_iter()
                .map(|s| Jwtsvid {
                    spiffe_id: s.spiffe_id.to_string(),
                    svid: s.token,
                    hint: s.hint,
                })
                .collect(),
        }))
    }

    /// `ValidateJWTSVID`.
    pub(super) async fn handle_validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(request.metadata())?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        // Validation needs no identity of the caller, but the caller must be attestable.
        let caller = self.caller(&request).await?;
        let (ours, own, others) = federated(&*self.source);
        let mut bundles = others;
        bundles.insert(ours, own);
        let claims = attest::jwt::validate_jwt_svid(&req.svid, &bundles, &req.audience, wall_now())
            .map_err(|e| Status::invalid_argument(format!("invalid JWT-SVID: {e}")))?;
        let mut resp = ValidateJwtsvidResponse {
            spiffe_id: claims.spiffe_id.to_string(),
            claims: None,
        };
        let fields = &mut resp.claims.get_or_insert_with(Default::default).fields;
        for (name, value) in &claims.claims {
            if !value.is_null() {
                fields.insert(name.clone(), json_to_pb(value));
            }
        }
        self.recheck(&caller).await?;
        Ok(Response::new(resp))
    }
}

/// The wall clock (the shell's; for token expiry checks).
fn wall_now() -> UnixTime {
    #[allow(clippy::disallowed_methods)] // the production wall clock, in the shell
    let now = std::time::SystemTime::now();
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UnixTime::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// `FetchJWTBundles`'s message: JWKS documents with only the `jwt-svid` keys.
pub(super) fn jwt_bundles_message(
    source: &dyn WorkloadSource,
    selectors: &BTreeSet<Selector>,
) -> Result<(JwtBundlesResponse, Digest), Status> {
    if source.x509_svids(selectors).is_empty() {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let (ours, own, others) = federated(source);
    let mut d = Digester::new(b"jwt-bundles");
    let mut resp = JwtBundlesResponse::default();
    for (td, bundle) in std::iter::once((ours, own)).chain(others) {
        let key = bundle_key(&td);
        let jwks = bundle.jwt_only().to_json().into_bytes();
        d.put(key.as_bytes());
        d.put(&jwks);
        resp.bundles.insert(key, jwks);
    }
    Ok((resp, d.finish()))
}

/// Converts a JSON value into a `google.protobuf.Value`. Generic so that this crate needs no
/// direct dependency on `prost-types`: `V` is inferred from the generated message's field type.
pub(super) fn json_to_pb<V>(value: &serde_json::Value) -> V
where
    V: Default + From<bool> + From<f64> + From<String> + From<Vec<V>> + From<BTreeMap<String, V>>,
{
    use serde_json::Value as J;
    match value {
        J::Null => V::default(),
        J::Bool(b) => V::from(*b),
        J::Number(n) => n.as_f64().map_or_else(V::default, V::from),
        J::String(s) => V::from(s.clone()),
        J::Array(items) => V::from(items.iter().map(json_to_pb).collect::<Vec<V>>()),
        J::Object(members) => V::from(
            members
                .iter()
                .map(|(k, v)| (k.clone(), json_to_pb(v)))
                .collect::<BTreeMap<String, V>>(),
        ),
    }
}
