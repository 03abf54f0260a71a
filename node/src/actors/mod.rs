//! The node's actors: plain structs, sans-IO (DESIGN.md §4). Each takes its inputs as
//! `handle_*` calls with the time as an argument and writes what must happen (Raft proposals) to
//! an output vector; the shell (or the simulator) executes it.

pub mod agent;
pub mod issuer;
pub mod membership;
pub mod rotation;

pub use agent::AgentCache;
pub use issuer::{Issuer, IssuerConfig, JwtGrant, X509Grant};
pub use rotation::CaRotation;
