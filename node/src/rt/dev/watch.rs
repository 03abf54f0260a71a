//! After start-up: the [`Signals`] that stop the plane (Ctrl-C, SIGTERM, SIGHUP) and [`monitor`],
//! which reports children that exit (never restarting them) until one arrives.

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::procs::{status_text, Procs, Which};
use super::{fail, say, DevError};

/// How often running children are checked.
const MONITOR_TICK: Duration = Duration::from_millis(200);

/// Ctrl-C, SIGTERM and SIGHUP, registered before any child starts.
#[derive(Debug)]
pub(super) struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    pub(super) fn new() -> Result<Signals, DevError> {
        let reg = |kind: SignalKind| {
            signal(kind).map_err(|e| fail(format!("cannot install a signal handler: {e}")))
        };
        Ok(Signals {
            int: reg(SignalKind::interrupt())?,
            term: reg(SignalKind::terminate())?,
            hup: reg(SignalKind::hangup())?,
        })
    }

    pub(super) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted",
            _ = self.term.recv() => "SIGTERM received",
            _ = self.hup.recv() => "SIGHUP received",
        }
    }
}

/// Reports children that exit until a signal arrives (`Some(why)`) or nothing runs (`None`).
pub(super) async fn monitor(
    procs: &mut Procs,
    signals: &mut Signals,
    n: u8,
) -> Option<&'static str> {
    loop {
        tokio::select! {
            why = signals.recv() => return Some(why),
            () = tokio::time::sleep(MONITOR_TICK) => {}
        }
        for i in 1..=n {
            if let Some(status) = procs.exited(Which::Node(i)) {
                let left = procs.running_nodes();
                let total = usize::from(n);
                let log = if status.code().is_some_and(|c| c != 0) {
                    format!(" (its log: {})", procs.log_of(Which::Node(i)).display())
                } else {
                    String::new()
                };
                let outlook = if left * 2 > total {
                    format!("the cluster carries on with {left} of {total} nodes")
                } else if left == 0 {
                    "no server node is left: the agent serves cached SVIDs until they expire; Ctrl-C and run sigil dev again to restart the plane".to_owned()
                } else {
                    format!("{left} of {total} nodes left, no quorum: admin writes fail and issuing stops after staleness_max; Ctrl-C and run sigil dev again to restart the plane")
                };
                say(&format!(
                    "node {i} exited ({}){log}; {outlook}",
                    status_text(status)
                ));
            }
        }
        if let Some(status) = procs.exited(Which::Agent) {
            say(&format!(
                "the agent exited ({}); workloads get no SVIDs now (its log: {}); Ctrl-C and run sigil dev again to restart it",
                status_text(status),
                procs.log_of(Which::Agent).display()
            ));
        }
        if procs.running_nodes() == 0 && procs.agent.is_none() {
            return None;
        }
    }
}
