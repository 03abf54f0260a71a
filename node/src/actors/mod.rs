//! The node's actors: plain structs, sans-IO (DESIGN.md §4). An actor takes its inputs with the
//! time as an argument and writes what must happen to an output vector; the shell (or the
//! simulator) carries the outputs out and feeds the results back as inputs.
//!
//! [`Actor`] is the shape: [`Actor::handle`] one input at `now` (the monotonic clock) and `wall`
//! (the wall clock), and [`Actor::next_deadline`] for when it wants to be called again with
//! nothing new (a timer). The agent ([`agent::AgentCore`]) and leader contact ([`Contact`])
//! have it; the server's other actors ([`Issuer`], [`CaRotation`], [`membership`]) take their
//! inputs as `handle_*` calls of the same kind.

pub mod agent;
pub mod contact;
pub mod issuer;
pub mod membership;
pub mod registration;
pub mod rotation;

pub use agent::{AgentCache, AgentCore};
pub use contact::Contact;
pub use issuer::{Issuer, IssuerConfig, JwtGrant, X509Grant};
pub use rotation::CaRotation;

use wire::{Mono, UnixTime};

/// One actor: inputs in, outputs out, time passed in (see the module docs).
pub trait Actor {
    /// What happens to it.
    type Input;
    /// What it asks the shell to do.
    type Output;
    /// Handles `input` at `now` / `wall`, appending what must happen to `out`.
    fn handle(
        &mut self,
        now: Mono,
        wall: UnixTime,
        input: Self::Input,
        out: &mut Vec<Self::Output>,
    );
    /// When it must be handed [`Self::Input`]'s tick next (`None`: only when something happens).
    fn next_deadline(&self) -> Option<Mono>;
}
