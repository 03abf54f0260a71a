//! Limits per source address on the QUIC endpoint (DESIGN.md §10: unauthenticated work is
//! bounded per source and never costs a Raft write).
//!
//! A source is an IP address (ports are free to pick, so they do not count). [`SourceGuard`]
//! counts, per source: open QUIC connections (Raft and node API), node API requests in flight,
//! and — with a token bucket — node API requests from callers without a client certificate (the
//! bundle, join-token, x509pop and TPM attestation: everything anyone can ask). A connection or
//! request over a limit is refused at once, before any work is done for it.
//!
//! The guard's memory is bounded: a source is remembered while it has connections or requests,
//! or while its bucket is not full again; at most [`SOURCES_MAX`] sources are remembered, and a
//! new source beyond that is refused (an address flood cannot grow the table).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use wire::Mono;

/// Most sources remembered at once.
pub const SOURCES_MAX: usize = 65_536;

/// The limits, per source IP address (`[limits]` in `server.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Concurrent QUIC connections (default 64).
    pub connections_per_source: u32,
    /// Node API requests in flight, over all of the source's connections (default 512).
    pub requests_in_flight_per_source: u32,
    /// Node API requests without a client certificate per second, sustained (default 20).
    pub unauthenticated_per_sec: u32,
    /// … and in one burst (default 40).
    pub unauthenticated_burst: u32,
}

impl Default for SourceLimits {
    fn default() -> SourceLimits {
        SourceLimits {
            connections_per_source: 64,
            requests_in_flight_per_source: 512,
            unauthenticated_per_sec: 20,
            unauthenticated_burst: 40,
        }
    }
}

#[derive(Debug)]
struct Source {
    connections: u32,
    in_flight: u32,
    /// Tokens left, in thousandths, as of `refilled`.
    milli_tokens: u64,
    refilled: Mono,
}

/// What a counted connection or request holds; dropping it gives the slot back.
#[derive(Debug)]
pub struct Permit {
    guard: Arc<SourceGuard>,
    ip: IpAddr,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connection,
    Request,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.guard.release(self.ip, self.kind);
    }
}

/// Why a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Too many connections from this address.
    #[error("more than {0} connections from this address")]
    Connections(u32),
    /// Too many requests in flight from this address.
    #[error("more than {0} node API requests in flight from this address")]
    InFlight(u32),
    /// Too many unauthenticated requests per second from this address.
    #[error("more than {0} requests per second without a client certificate from this address; retry later")]
    Rate(u32),
    /// Too many addresses at once.
    #[error("too many client addresses at once; retry later")]
    Sources,
}

/// Counts connections and requests per source IP address.
#[derive(Debug)]
pub struct SourceGuard {
    limits: SourceLimits,
    sources: Mutex<HashMap<IpAddr, Source>>,
}

impl SourceGuard {
    /// A guard enforcing `limits`.
    pub fn new(limits: SourceLimits) -> Arc<SourceGuard> {
        Arc::new(SourceGuard {
            limits,
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// The limits enforced.
    pub fn limits(&self) -> SourceLimits {
        self.limits
    }

    fn burst_milli(&self) -> u64 {
        u64::from(self.limits.unauthenticated_burst.max(1)) * 1000
    }

    fn with_source<R>(
        &self,
        ip: IpAddr,
        now: Mono,
        f: impl FnOnce(&mut Source, &SourceLimits) -> Result<R, Refused>,
    ) -> Result<R, Refused> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if !sources.contains_key(&ip) && sources.len() >= SOURCES_MAX {
            // Forget sources that are idle and whose bucket has refilled by now.
            let (burst, rate) = (self.burst_milli(), self.limits.unauthenticated_per_sec);
            sources.retain(|_, s| {
                s.connections > 0 || s.in_flight > 0 || refill(s, now, rate, burst) < burst
            });
            if sources.len() >= SOURCES_MAX {
                return Err(Refused::Sources);
            }
        }
        let burst = self.burst_milli();
        let source = sources.entry(ip).or_insert(Source {
            connections: 0,
            in_flight: 0,
            milli_tokens: burst,
            refilled: now,
        });
        f(source, &self.limits)
    }

    /// Counts a new connection from `ip`, or refuses it.
    pub fn connect(self: &Arc<Self>, ip: IpAddr, now: Mono) -> Result<Permit, Refused> {
        self.with_source(ip, now, |s, l| {
            if s.connections >= l.connections_per_source {
                return Err(Refused::Connections(l.connections_per_source));
            }
            s.connections += 1;
            Ok(())
        })?;
        Ok(Permit {
            guard: self.clone(),
            ip,
            kind: Kind::Connection,
        })
    }

    /// Counts a node API request from `ip`; one without a client certificate
    /// (`authenticated == false`) also takes a token from the source's bucket.
    pub fn request(
        self: &Arc<Self>,
        ip: IpAddr,
        authenticated: bool,
        now: Mono,
    ) -> Result<Permit, Refused> {
        let burst = self.burst_milli();
        self.with_source(ip, now, |s, l| {
            if s.in_flight >= l.requests_in_flight_per_source {
                return Err(Refused::InFlight(l.requests_in_flight_per_source));
            }
            if !authenticated {
                let tokens = refill(s, now, l.unauthenticated_per_sec, burst);
                if tokens < 1000 {
                    return Err(Refused::Rate(l.unauthenticated_per_sec));
                }
                s.milli_tokens = tokens - 1000;
                s.refilled = now;
            }
            s.in_flight += 1;
            Ok(())
        })?;
        Ok(Permit {
            guard: self.clone(),
            ip,
            kind: Kind::Request,
        })
    }

    fn release(&self, ip: IpAddr, kind: Kind) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sources.get_mut(&ip) {
            match kind {
                Kind::Connection => s.connections = s.connections.saturating_sub(1),
                Kind::Request => s.in_flight = s.in_flight.saturating_sub(1),
            }
            if s.connections == 0 && s.in_flight == 0 && s.milli_tokens >= self.burst_milli() {
                sources.remove(&ip);
            }
        }
    }

    /// How many sources are remembered (for tests and stats).
    pub fn sources(&self) -> usize {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The bucket's tokens (thousandths) at `now`, refilled at `per_sec`, capped at `burst`.
fn refill(s: &Source, now: Mono, per_sec: u32, burst: u64) -> u64 {
    let ms = u64::try_from(now.saturating_since(s.refilled).as_millis()).unwrap_or(u64::MAX);
    s.milli_tokens
        .saturating_add(ms.saturating_mul(u64::from(per_sec)))
        .min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> Mono {
        Mono::from_duration(Duration::from_millis(ms))
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    #[test]
    fn connections_are_bounded_per_address_and_given_back() {
        let guard = SourceGuard::new(SourceLimits {
            connections_per_source: 2,
            ..SourceLimits::default()
        });
        let one = guard.connect(A, at(0)).expect("1");
        let _two = guard.connect(A, at(0)).expect("2");
        assert_eq!(guard.connect(A, at(0)).err(), Some(Refused::Connections(2)));
        let _other = guard
            .connect(B, at(0))
            .expect("another address is not affected");
        drop(one);
        guard.connect(A, at(0)).expect("a slot came back");
    }

    #[test]
    fn unauthenticated_requests_are_rate_limited_with_a_burst() {
        let guard = SourceGuard::new(SourceLimits {
            unauthenticated_per_sec: 10,
            unauthenticated_burst: 5,
            ..SourceLimits::default()
        });
        for i in 0..5 {
            drop(
                guard
                    .request(A, false, at(0))
                    .unwrap_or_else(|e| panic!("{i}: {e}")),
            );
        }
        assert_eq!(
            guard.request(A, false, at(0)).err(),
            Some(Refused::Rate(10))
        );
        // Authenticated requests do not use the bucket.
        drop(guard.request(A, true, at(0)).expect("authenticated"));
        // 100 ms later one token is back (10 per second), not two.
        drop(guard.request(A, false, at(100)).expect("refilled"));
        assert!(guard.request(A, false, at(100)).is_err());
        // A source whose bucket is not full is remembered although idle.
        assert_eq!(guard.sources(), 1);
    }

    #[test]
    fn requests_in_flight_are_bounded() {
        let guard = SourceGuard::new(SourceLimits {
            requests_in_flight_per_source: 3,
            ..SourceLimits::default()
        });
        let held: Vec<Permit> = (0..3)
            .map(|_| guard.request(A, true, at(0)).expect("in flight"))
            .collect();
        assert_eq!(
            guard.request(A, true, at(0)).err(),
            Some(Refused::InFlight(3))
        );
        drop(held);
        drop(guard.request(A, true, at(0)).expect("given back"));
        assert_eq!(
            guard.sources(),
            0,
            "idle sources with a full bucket are forgotten"
        );
    }
}
