//! [`AgentCache`]: what an agent holds and decides about its workloads, sans-IO — the latest
//! view a server sent (entries and bundles), the X.509-SVID it holds per entry, the JWT-SVIDs it
//! cached, which SVIDs are due for signing, and what a workload with a given selector set is
//! served.
//!
//! [`super::AgentCore`] owns it (in production and in the simulator alike) and the Workload API
//! reads it: drop SVIDs of entries that left the view, sign the missing, changed and half-expired
//! ones, serve only unexpired SVIDs of entries whose selectors all hold.
//!
//! **An SVID is served only with a bundle that verifies it.** A server signs with a key the
//! moment its publication applies on that server, which can be before the agent's latest view
//! carries that key (the view and the signing are two messages). A freshly signed SVID that does
//! not verify against the agent's bundle waits as *pending* — the previous SVID is served
//! meanwhile — and takes over with the first view whose bundle verifies it. (The simulator found
//! workloads handed an SVID with a bundle that could not verify it.)

use std::collections::{BTreeMap, BTreeSet};

use wire::api::AgentView;
use wire::{Bundle, EntryId, RegistrationEntry, Selector, SpiffeId, TrustDomain, UnixTime};

/// Most cached JWT-SVIDs (per SPIFFE ID and audience set); the cache starts over when full.
pub const JWT_CACHE_MAX: usize = 4096;

/// Half-life test: renew once `wall` passed the middle of `[issued_at, not_after]`.
pub fn past_half_life(issued_at: UnixTime, not_after: UnixTime, wall: UnixTime) -> bool {
    let life = not_after.saturating_since(issued_at);
    wall >= issued_at.saturating_add(life / 2)
}

/// One workload X.509-SVID the agent holds; `K` is its private key as the shell keeps it.
#[derive(Debug)]
pub struct HeldX509<K> {
    /// Revision of the entry it was signed for (a changed entry is signed again).
    pub revision: u64,
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// The private key (never leaves the host).
    pub key: K,
    /// When the agent received it (its own clock).
    pub issued_at: UnixTime,
    /// The certificate's NotAfter.
    pub not_after: UnixTime,
}

/// A cached JWT-SVID.
#[derive(Debug, Clone)]
pub struct HeldJwt {
    /// The token.
    pub token: String,
    /// When the agent received it.
    pub issued_at: UnixTime,
    /// Its `exp`.
    pub expires_at: UnixTime,
}

/// Key of the JWT-SVID cache: SPIFFE ID and sorted, deduplicated audience.
pub type JwtKey = (SpiffeId, Vec<String>);

/// Whether an X.509-SVID `chain` for `id` verifies against `bundle` at `wall`.
pub type Verifier = fn(&[Vec<u8>], &SpiffeId, &Bundle, UnixTime) -> bool;

/// The real [`Verifier`]: full X.509-SVID validation.
pub fn chains_to(chain: &[Vec<u8>], id: &SpiffeId, bundle: &Bundle, wall: UnixTime) -> bool {
    attest::x509::validate_x509_svid(chain, &(id.trust_domain(), bundle.clone()), wall).is_ok()
}

/// What a workload is served: the entry and the SVID held for it.
#[derive(Debug)]
pub struct Served<'a, K> {
    /// The matching entry.
    pub entry: &'a RegistrationEntry,
    /// The unexpired SVID held for it.
    pub svid: &'a HeldX509<K>,
}

/// The agent's cache (see the module docs).
#[derive(Debug)]
pub struct AgentCache<K> {
    view: Option<AgentView>,
    /// Our bundle while no view arrived yet (from attestation or the data dir).
    bundle: Bundle,
    svids: BTreeMap<EntryId, HeldX509<K>>,
    /// Signed SVIDs waiting for a bundle that verifies them.
    pending: BTreeMap<EntryId, HeldX509<K>>,
    jwts: BTreeMap<JwtKey, HeldJwt>,
    last_contact: Option<UnixTime>,
    verify: Verifier,
}

impl<K> AgentCache<K> {
    /// An empty cache trusting `bundle` until a view arrives.
    pub fn new(bundle: Bundle) -> AgentCache<K> {
        AgentCache::with_verifier(bundle, chains_to)
    }

    /// As [`AgentCache::new`], checking SVIDs against bundles with `verify`.
    pub fn with_verifier(bundle: Bundle, verify: Verifier) -> AgentCache<K> {
        AgentCache {
            view: None,
            bundle,
            svids: BTreeMap::new(),
            pending: BTreeMap::new(),
            jwts: BTreeMap::new(),
            last_contact: None,
            verify,
        }
    }

    /// Moves pending SVIDs that verify against our bundle now into service.
    fn promote(&mut self) {
        let bundle = self.bundle();
        let ready: Vec<EntryId> = self
            .pending
            .iter()
            .filter(|(_, h)| (self.verify)(&h.chain, &h.spiffe_id, &bundle, h.issued_at))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ready {
            if let Some(held) = self.pending.remove(&id) {
                self.svids.insert(id, held);
            }
        }
    }

    /// Our trust domain's bundle: the latest view's, else the one from attestation.
    pub fn bundle(&self) -> Bundle {
        self.view
            .as_ref()
            .map(|v| v.bundle.clone())
            .unwrap_or_else(|| self.bundle.clone())
    }

    /// Federated bundles of the latest view.
    pub fn federated(&self) -> Vec<(TrustDomain, Bundle)> {
        self.view
            .as_ref()
            .map(|v| v.federated.clone())
            .unwrap_or_default()
    }

    /// A bundle from a (re-)attestation: replaces ours, and the view's until the next view —
    /// unless it is older than ours (a lower sequence number: the attesting server is behind).
    /// An older bundle may lack the authority that signed SVIDs we serve; the simulator found
    /// an x509pop agent that re-attested through a lagging node serving SVIDs its new bundle
    /// could not verify (seed 905306, 5 nodes). Returns whether it was taken.
    pub fn set_bundle(&mut self, bundle: Bundle) -> bool {
        let ours = self.bundle();
        if let (Some(new), Some(held)) = (bundle.sequence, ours.sequence) {
            if new < held {
                return false;
            }
        }
        if let Some(view) = self.view.as_mut() {
            view.bundle = bundle.clone();
        }
        self.bundle = bundle;
        self.promote();
        true
    }

    /// Applies a new view received at `wall`: SVIDs and JWT-SVIDs of entries that left it are
    /// dropped. Returns whether our bundle changed.
    ///
    /// A view read from an older applied state than the one we hold (a server that is behind:
    /// just restarted, or slow) is ignored: its bundle may lack an authority that already signed
    /// SVIDs we serve, and its entries may bring back deleted ones. The server catches up within
    /// moments and its next view applies.
    pub fn apply_view(&mut self, view: AgentView, wall: UnixTime) -> bool {
        if self
            .view
            .as_ref()
            .is_some_and(|v| view.applied_index < v.applied_index)
        {
            return false;
        }
        let keep: BTreeSet<&EntryId> = view.entries.iter().map(|e| &e.id).collect();
        self.svids.retain(|id, _| keep.contains(id));
        self.pending.retain(|id, _| keep.contains(id));
        let ids: BTreeSet<&SpiffeId> = view.entries.iter().map(|e| &e.spiffe_id).collect();
        self.jwts.retain(|(id, _), _| ids.contains(id));
        let bundle_changed = self.bundle() != view.bundle;
        self.view = Some(view);
        self.last_contact = Some(wall);
        if bundle_changed {
            self.promote();
        }
        bundle_changed
    }

    /// Entries (ID, revision) to sign now: no SVID held (served or pending), the entry changed,
    /// or past half life.
    pub fn due(&self, wall: UnixTime) -> Vec<(EntryId, u64)> {
        self.entries()
            .iter()
            .filter(
                |e| match self.pending.get(&e.id).or_else(|| self.svids.get(&e.id)) {
                    None => true,
                    Some(h) => {
                        h.revision != e.revision || past_half_life(h.issued_at, h.not_after, wall)
                    }
                },
            )
            .map(|e| (e.id.clone(), e.revision))
            .collect()
    }

    /// Stores a freshly signed SVID for `entry_id` (ignored if the entry left the view since):
    /// served at once if our bundle verifies it, else pending until a view's bundle does.
    pub fn store_x509(&mut self, entry_id: EntryId, held: HeldX509<K>) {
        if !self.entries().iter().any(|e| e.id == entry_id) {
            return;
        }
        if (self.verify)(&held.chain, &held.spiffe_id, &self.bundle(), held.issued_at) {
            self.pending.remove(&entry_id);
            self.svids.insert(entry_id, held);
        } else {
            self.pending.insert(entry_id, held);
        }
    }

    /// The entries of the latest view.
    pub fn entries(&self) -> &[RegistrationEntry] {
        self.view.as_ref().map_or(&[], |v| v.entries.as_slice())
    }

    /// Entries of the view whose selectors all hold for the workload.
    pub fn matching<'a>(
        &'a self,
        selectors: &'a BTreeSet<Selector>,
    ) -> impl Iterator<Item = &'a RegistrationEntry> + 'a {
        self.entries().iter().filter(|e| e.matches(selectors))
    }

    /// The X.509-SVIDs a workload with `selectors` is served at `wall`: unexpired SVIDs of the
    /// matching entries, in view order.
    pub fn x509_for<'a>(
        &'a self,
        selectors: &'a BTreeSet<Selector>,
        wall: UnixTime,
    ) -> Vec<Served<'a, K>> {
        self.matching(selectors)
            .filter_map(|entry| {
                let svid = self.svids.get(&entry.id)?;
                (svid.not_after > wall).then_some(Served { entry, svid })
            })
            .collect()
    }

    /// The entries a workload's JWT-SVID request names: matching, optionally only `spiffe_id`,
    /// one per SPIFFE ID.
    pub fn jwt_wanted(
        &self,
        selectors: &BTreeSet<Selector>,
        spiffe_id: Option<&SpiffeId>,
    ) -> Vec<&RegistrationEntry> {
        let mut seen = BTreeSet::new();
        self.entries()
            .iter()
            .filter(|e| e.matches(selectors))
            .filter(|e| spiffe_id.is_none_or(|id| *id == e.spiffe_id))
            .filter(|e| seen.insert(e.spiffe_id.clone()))
            .collect()
    }

    /// A cached JWT-SVID for `key` that is not past half life at `wall`.
    pub fn cached_jwt(&self, key: &JwtKey, wall: UnixTime) -> Option<&str> {
        self.jwts
            .get(key)
            .filter(|j| !past_half_life(j.issued_at, j.expires_at, wall))
            .map(|j| j.token.as_str())
    }

    /// Caches a JWT-SVID (the cache starts over at [`JWT_CACHE_MAX`]).
    pub fn store_jwt(&mut self, key: JwtKey, held: HeldJwt) {
        if self.jwts.len() >= JWT_CACHE_MAX {
            self.jwts.clear();
        }
        self.jwts.insert(key, held);
    }

    /// How many X.509-SVIDs are held.
    pub fn x509_count(&self) -> usize {
        self.svids.len()
    }

    /// The earliest NotAfter of the held X.509-SVIDs.
    pub fn earliest_not_after(&self) -> Option<UnixTime> {
        self.svids.values().map(|s| s.not_after).min()
    }

    /// When a server last sent a view.
    pub fn last_contact(&self) -> Option<UnixTime> {
        self.last_contact
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An entry `n` for `selectors` at `revision` (shared with the core's tests).
    pub(crate) fn entry(n: u8, selectors: &[&str], revision: u64) -> RegistrationEntry {
        let mut e = RegistrationEntry::new(
            EntryId::from_random([n; 16]),
            format!("spiffe://t.test/w/{n}").parse().expect("id"),
            "spiffe://t.test/sigil/agent/x".parse().expect("id"),
            selectors
                .iter()
                .map(|s| s.parse().expect("selector"))
                .collect(),
            0,
        );
        e.revision = revision;
        e
    }

    fn view(entries: Vec<RegistrationEntry>) -> AgentView {
        AgentView {
            node_id: 1,
            applied_index: 1,
            bundle: Bundle::default(),
            federated: vec![],
            entries,
        }
    }

    fn held(e: &RegistrationEntry, issued: u64, not_after: u64) -> HeldX509<()> {
        HeldX509 {
            revision: e.revision,
            spiffe_id: e.spiffe_id.clone(),
            chain: vec![vec![1]],
            key: (),
            issued_at: UnixTime::from_secs(issued),
            not_after: UnixTime::from_secs(not_after),
        }
    }

    /// A cache whose verifier accepts everything (the SVIDs here are not real certificates).
    fn trusting() -> AgentCache<()> {
        AgentCache::with_verifier(Bundle::default(), |_, _, _, _| true)
    }

    fn selectors(s: &[&str]) -> BTreeSet<Selector> {
        s.iter().map(|s| s.parse().expect("selector")).collect()
    }

    #[test]
    fn half_life() {
        let t = UnixTime::from_secs;
        assert!(!past_half_life(t(100), t(200), t(149)));
        assert!(past_half_life(t(100), t(200), t(150)));
        assert!(past_half_life(t(100), t(100), t(100)));
    }

    #[test]
    fn due_missing_changed_and_half_expired() {
        let a = entry(1, &["unix:uid:1"], 1);
        let b = entry(2, &["unix:uid:2"], 1);
        let c = entry(3, &["unix:uid:3"], 2);
        let mut cache = trusting();
        cache.apply_view(view(vec![a.clone(), b.clone(), c.clone()]), UnixTime::EPOCH);
        assert_eq!(cache.due(UnixTime::from_secs(100)).len(), 3);
        cache.store_x509(a.id.clone(), held(&a, 100, 200));
        cache.store_x509(b.id.clone(), held(&b, 100, 200));
        let mut old = held(&c, 100, 200);
        old.revision = 1;
        cache.store_x509(c.id.clone(), old);
        // a and b are fresh; c was signed for revision 1.
        assert_eq!(cache.due(UnixTime::from_secs(149)), vec![(c.id.clone(), 2)]);
        // At half life everything is due.
        assert_eq!(cache.due(UnixTime::from_secs(150)).len(), 3);
    }

    #[test]
    fn serves_only_matching_unexpired_and_drops_removed_entries() {
        let a = entry(1, &["unix:uid:1"], 1);
        let b = entry(2, &["unix:uid:1", "unix:gid:5"], 1);
        let mut cache = trusting();
        cache.apply_view(view(vec![a.clone(), b.clone()]), UnixTime::EPOCH);
        cache.store_x509(a.id.clone(), held(&a, 0, 100));
        cache.store_x509(b.id.clone(), held(&b, 0, 100));
        let uid1 = selectors(&["unix:uid:1"]);
        let both = selectors(&["unix:uid:1", "unix:gid:5"]);
        assert_eq!(cache.x509_for(&uid1, UnixTime::from_secs(50)).len(), 1);
        assert_eq!(cache.x509_for(&both, UnixTime::from_secs(50)).len(), 2);
        assert!(cache.x509_for(&both, UnixTime::from_secs(100)).is_empty());
        // b leaves the view: its SVID goes, and a store for it afterwards is ignored.
        cache.apply_view(view(vec![a.clone()]), UnixTime::EPOCH);
        assert_eq!(cache.x509_count(), 1);
        cache.store_x509(b.id.clone(), held(&b, 0, 100));
        assert_eq!(cache.x509_count(), 1);
        assert_eq!(cache.x509_for(&both, UnixTime::from_secs(50)).len(), 1);
    }

    #[test]
    fn a_view_from_an_older_state_is_ignored() {
        let a = entry(1, &["unix:uid:1"], 1);
        let mut cache = trusting();
        let mut newer = view(vec![a.clone()]);
        newer.applied_index = 10;
        newer.bundle.sequence = Some(5);
        assert!(cache.apply_view(newer.clone(), UnixTime::EPOCH));
        let mut behind = view(vec![]);
        behind.applied_index = 9;
        assert!(!cache.apply_view(behind, UnixTime::EPOCH));
        assert_eq!(cache.entries().len(), 1, "the lagging view did not apply");
        assert_eq!(cache.bundle().sequence, Some(5));
        let mut same = view(vec![]);
        same.applied_index = 10;
        same.bundle.sequence = Some(5);
        cache.apply_view(same, UnixTime::EPOCH);
        assert!(cache.entries().is_empty(), "an equally recent view applies");
    }

    #[test]
    fn an_svid_waits_for_a_bundle_that_verifies_it() {
        // Fake verification: the leaf's first byte names the bundle sequence that holds its key.
        let mut cache: AgentCache<()> =
            AgentCache::with_verifier(Bundle::default(), |chain, _, bundle, _| {
                u64::from(chain[0][0]) <= bundle.sequence.unwrap_or(0)
            });
        let a = entry(1, &["unix:uid:1"], 1);
        let uid1 = selectors(&["unix:uid:1"]);
        let mut v1 = view(vec![a.clone()]);
        v1.applied_index = 1;
        v1.bundle.sequence = Some(1);
        cache.apply_view(v1.clone(), UnixTime::EPOCH);
        let mut old = held(&a, 0, 100);
        old.chain = vec![vec![1]];
        cache.store_x509(a.id.clone(), old);
        let mut new = held(&a, 50, 150);
        new.chain = vec![vec![2]];
        cache.store_x509(a.id.clone(), new);
        let served = cache.x509_for(&uid1, UnixTime::from_secs(60));
        assert_eq!(
            served[0].svid.chain,
            vec![vec![1]],
            "the old SVID is served meanwhile"
        );
        assert!(
            cache.due(UnixTime::from_secs(60)).is_empty(),
            "a pending SVID is not signed again"
        );
        let mut v2 = v1.clone();
        v2.applied_index = 2;
        v2.bundle.sequence = Some(2);
        cache.apply_view(v2, UnixTime::EPOCH);
        let served = cache.x509_for(&uid1, UnixTime::from_secs(60));
        assert_eq!(
            served[0].svid.chain,
            vec![vec![2]],
            "the new bundle verifies it"
        );
    }

    #[test]
    fn an_attestation_bundle_older_than_ours_is_ignored() {
        let a = entry(1, &["unix:uid:1"], 1);
        let mut cache = trusting();
        let mut v = view(vec![a]);
        v.bundle.sequence = Some(7);
        cache.apply_view(v, UnixTime::EPOCH);
        let older = Bundle {
            sequence: Some(6),
            ..Bundle::default()
        };
        assert!(!cache.set_bundle(older), "a lagging server's bundle");
        assert_eq!(cache.bundle().sequence, Some(7));
        let newer = Bundle {
            sequence: Some(9),
            ..Bundle::default()
        };
        assert!(cache.set_bundle(newer));
        assert_eq!(cache.bundle().sequence, Some(9));
    }

    #[test]
    fn jwt_cache_refreshes_at_half_life_and_follows_the_view() {
        let a = entry(1, &["unix:uid:1"], 1);
        let mut cache = trusting();
        cache.apply_view(view(vec![a.clone()]), UnixTime::EPOCH);
        let key = (a.spiffe_id.clone(), vec!["aud".to_string()]);
        cache.store_jwt(
            key.clone(),
            HeldJwt {
                token: "t".into(),
                issued_at: UnixTime::from_secs(0),
                expires_at: UnixTime::from_secs(100),
            },
        );
        assert_eq!(cache.cached_jwt(&key, UnixTime::from_secs(49)), Some("t"));
        assert_eq!(cache.cached_jwt(&key, UnixTime::from_secs(50)), None);
        cache.apply_view(view(vec![]), UnixTime::EPOCH);
        assert_eq!(cache.cached_jwt(&key, UnixTime::from_secs(1)), None);
    }
}
