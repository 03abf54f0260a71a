//! The production shell: the only code allowed to read the OS clock and entropy, start tasks and
//! open sockets (each such call carries a scoped `#[allow(clippy::disallowed_methods)]`).

pub mod admin;
pub mod agent;
pub mod agent_admin;
pub mod api;
pub mod config;
pub mod dev;
pub mod env;
pub mod h2_authority;
pub mod limits;
pub mod logging;
pub mod quic;
pub mod serve;
pub mod socket;
pub mod tls;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod unix_attest;
pub mod workload_api;

pub use env::SystemEnv;
pub use quic::{QuicConfig, QuicError, QuicStats, QuicTransport};
pub use tls::{NodeIdentity, TlsKey, TrustStore};
