//! The production shell: the only code allowed to read the OS clock and entropy, start tasks and
//! open sockets (each such call carries a scoped `#[allow(clippy::disallowed_methods)]`).

pub mod env;
pub mod logging;

pub use env::SystemEnv;
