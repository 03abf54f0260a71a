//! The X.509 side of the Workload API: the messages of `FetchX509SVID` (the caller's SVIDs with
//! keys, our CAs and the federated bundles) and `FetchX509Bundles`.

use std::collections::BTreeSet;

use tonic::Status;
use wire::workload::{X509BundlesResponse, X509svid, X509svidResponse};
use wire::{Bundle, Selector};

use super::stream::{Digest, Digester};
use super::{bundle_key, federated, unique_hints, WorkloadSource, NO_IDENTITY};

/// The X.509 CAs of `bundle`, concatenated DER.
fn x509_der(bundle: &Bundle) -> Vec<u8> {
    bundle
        .x509_authorities
        .iter()
        .flat_map(|a| a.cert_der.iter().copied())
        .collect()
}

/// `FetchX509SVID`'s message.
pub(super) fn x509_svid_message(
    source: &dyn WorkloadSource,
    selectors: &BTreeSet<Selector>,
) -> Result<(X509svidResponse, Digest), Status> {
    let svids = unique_hints(source.x509_svids(selectors), |s| &s.hint);
    if svids.is_empty() {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let (_, own, others) = federated(source);
    let own_der = x509_der(&own);
    let mut d = Digester::new(b"x509-svid");
    d.put(&own_der);
    let mut resp = X509svidResponse::default();
    for svid in svids {
        let chain: Vec<u8> = svid.chain.concat();
        let spiffe_id = svid.spiffe_id.to_string();
        d.put(spiffe_id.as_bytes());
        d.put(&chain);
        d.put(&svid.key_pkcs8);
        d.put(svid.hint.as_bytes());
        resp.svids.push(X509svid {
            spiffe_id,
            x509_svid: chain,
            x509_svid_key: svid.key_pkcs8.to_vec(),
            bundle: own_der.clone(),
            hint: svid.hint,
        });
    }
    for (td, bundle) in others {
        let key = bundle_key(&td);
        let der = x509_der(&bundle);
        d.put(key.as_bytes());
        d.put(&der);
        resp.federated_bundles.insert(key, der);
    }
    Ok((resp, d.finish()))
}

/// `FetchX509Bundles`'s message.
pub(super) fn x509_bundles_message(
    source: &dyn WorkloadSource,
    selectors: &BTreeSet<Selector>,
) -> Result<(X509BundlesResponse, Digest), Status> {
    if source.x509_svids(selectors).is_empty() {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let (ours, own, others) = federated(source);
    let mut d = Digester::new(b"x509-bundles");
    let mut resp = X509BundlesResponse::default();
    for (td, bundle) in std::iter::once((ours, own)).chain(others) {
        let key = bundle_key(&td);
        let der = x509_der(&bundle);
        d.put(key.as_bytes());
        d.put(&der);
        resp.bundles.insert(key, der);
    }
    Ok((resp, d.finish()))
}
