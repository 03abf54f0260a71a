//! [`Contact`]: whether this server node is in contact with a leader, and — on the leader — when
//! to commit the next [`wire::Command::Tick`]. The shell samples Raft every
//! [`crate::server::CONTACT_SAMPLE`] ([`ContactInput::Sample`]) and carries out the outputs:
//! the contact time goes to the [`super::Issuer`] (which refuses to sign once it is older than
//! `staleness_max`), a tick is proposed through Raft, a removed node stands down.
//!
//! A node is in contact when it leads and heard from a quorum within `quorum_ack_max`, or — as of
//! the proposer's clock — when the newest tick it applied was proposed: a committed tick proves
//! that a leader had a quorum then. Naming a leader in Raft's metrics is not contact (a follower
//! keeps naming one for a few election timeouts after the last message, and a leader that lost
//! its quorum never steps down); applied progress alone is not either (a lagging follower
//! catching up applies old entries). The simulator found all three. Dating contact by the
//! proposer's clock makes the bound depend on clock skew: a node whose clock is behind the
//! leader's by δ keeps issuing up to δ longer.
//!
//! A node that applied its own removal, or was told of it by a member, stops campaigning and is
//! in contact with nobody: it stops issuing within `staleness_max` (the members ignore it, and a
//! runaway term would only reach them through a member that lags — simulator findings).

use std::time::Duration;

use wire::{Mono, UnixTime};

use super::Actor;

/// What the shell read from Raft.
#[derive(Debug, Clone, Default)]
pub struct RaftSample {
    /// This node is Raft's leader.
    pub leader: bool,
    /// How long ago a quorum last acknowledged this leader (`None`: never, or not leading).
    pub quorum_ack_age: Option<Duration>,
    /// The proposer's wall time of the newest tick applied in this process.
    pub last_tick: Option<UnixTime>,
    /// This node knows it was removed from the cluster.
    pub removed: bool,
}

/// What happens to the contact actor.
#[derive(Debug, Clone)]
pub enum ContactInput {
    /// A sample of Raft's state.
    Sample(RaftSample),
    /// The tick proposal of [`ContactOutput::ProposeTick`] ended (committed or not).
    TickDone,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactOutput {
    /// The node was in contact with a leader at this point of its monotonic clock.
    InContact(Mono),
    /// Propose a tick dated `at` (this node's wall clock); report [`ContactInput::TickDone`].
    ProposeTick(UnixTime),
    /// This node was removed: stop taking part in elections and heartbeats.
    StandDown,
}

/// The contact actor (see the module docs).
#[derive(Debug)]
pub struct Contact {
    quorum_ack_max: Duration,
    tick_every: Duration,
    sample_every: Duration,
    campaigning: bool,
    last_tick: Option<Mono>,
    tick_in_flight: bool,
    next_sample: Mono,
}

impl Contact {
    /// A leader counts as in contact if a quorum acknowledged it within `quorum_ack_max`; it
    /// commits a tick every `tick_every`; the shell samples every `sample_every`.
    pub fn new(quorum_ack_max: Duration, tick_every: Duration, sample_every: Duration) -> Contact {
        Contact {
            quorum_ack_max,
            tick_every,
            sample_every,
            campaigning: true,
            last_tick: None,
            tick_in_flight: false,
            next_sample: Mono::ZERO,
        }
    }

    /// Whether this node stood down (it was removed).
    pub fn stood_down(&self) -> bool {
        !self.campaigning
    }

    fn sample(&mut self, now: Mono, wall: UnixTime, s: RaftSample, out: &mut Vec<ContactOutput>) {
        self.next_sample = now.saturating_add(self.sample_every);
        if self.campaigning && s.removed {
            self.campaigning = false;
            out.push(ContactOutput::StandDown);
        }
        let leading_with_quorum = s.leader
            && s.quorum_ack_age
                .is_some_and(|age| age <= self.quorum_ack_max);
        // The newest tick's time by our clock, as a monotonic instant; a tick from before this
        // process started (replayed from the log) proves nothing.
        let ticked = s.last_tick.and_then(|at| {
            let age = wall.saturating_since(at);
            now.saturating_since(Mono::ZERO)
                .checked_sub(age)
                .map(Mono::from_duration)
        });
        let in_contact = if !self.campaigning {
            None
        } else if leading_with_quorum {
            Some(now)
        } else {
            ticked
        };
        if let Some(at) = in_contact {
            out.push(ContactOutput::InContact(at));
        }
        if !(s.leader && self.campaigning) {
            self.last_tick = None;
        } else if !self.tick_in_flight
            && self
                .last_tick
                .is_none_or(|t| now.saturating_since(t) >= self.tick_every)
        {
            self.last_tick = Some(now);
            self.tick_in_flight = true;
            out.push(ContactOutput::ProposeTick(wall));
        }
    }
}

impl Actor for Contact {
    type Input = ContactInput;
    type Output = ContactOutput;

    fn handle(
        &mut self,
        now: Mono,
        wall: UnixTime,
        input: ContactInput,
        out: &mut Vec<ContactOutput>,
    ) {
        match input {
            ContactInput::Sample(s) => self.sample(now, wall, s, out),
            ContactInput::TickDone => self.tick_in_flight = false,
        }
    }

    fn next_deadline(&self) -> Option<Mono> {
        Some(self.next_sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Mono {
        Mono::from_duration(Duration::from_millis(n))
    }

    fn contact() -> Contact {
        Contact::new(
            Duration::from_secs(2),
            Duration::from_millis(500),
            Duration::from_millis(100),
        )
    }

    fn run(c: &mut Contact, at_ms: u64, wall_ms: u64, s: RaftSample) -> Vec<ContactOutput> {
        let mut out = Vec::new();
        c.handle(
            ms(at_ms),
            UnixTime::from_millis(wall_ms),
            ContactInput::Sample(s),
            &mut out,
        );
        out
    }

    #[test]
    fn a_leader_is_in_contact_only_with_a_recent_quorum_and_ticks_one_at_a_time() {
        let mut c = contact();
        let leader = |ack_ms: u64| RaftSample {
            leader: true,
            quorum_ack_age: Some(Duration::from_millis(ack_ms)),
            ..RaftSample::default()
        };
        let out = run(&mut c, 1_000, 50_000, leader(100));
        assert_eq!(
            out,
            vec![
                ContactOutput::InContact(ms(1_000)),
                ContactOutput::ProposeTick(UnixTime::from_millis(50_000))
            ]
        );
        // The tick is still in flight: no second one, however long it takes.
        assert_eq!(
            run(&mut c, 2_000, 51_000, leader(100)),
            vec![ContactOutput::InContact(ms(2_000))]
        );
        let mut out = Vec::new();
        c.handle(
            ms(2_050),
            UnixTime::from_millis(51_050),
            ContactInput::TickDone,
            &mut out,
        );
        assert!(out.is_empty());
        assert!(run(&mut c, 2_100, 51_100, leader(100))
            .contains(&ContactOutput::ProposeTick(UnixTime::from_millis(51_100))));
        // A leader whose quorum went quiet is not in contact (it never steps down by itself).
        assert!(!run(&mut c, 2_200, 51_200, leader(2_001))
            .iter()
            .any(|o| matches!(o, ContactOutput::InContact(_))));
        assert_eq!(c.next_deadline(), Some(ms(2_300)));
    }

    #[test]
    fn a_follower_dates_contact_by_the_newest_tick_it_applied() {
        let mut c = contact();
        let follower = |tick_ms: u64| RaftSample {
            last_tick: Some(UnixTime::from_millis(tick_ms)),
            ..RaftSample::default()
        };
        // A tick proposed 300 ms ago (by the proposer's clock) at monotonic 10 s.
        assert_eq!(
            run(&mut c, 10_000, 50_000, follower(49_700)),
            vec![ContactOutput::InContact(ms(9_700))]
        );
        // A tick older than this process proves nothing.
        assert!(run(&mut c, 1_000, 50_000, follower(40_000)).is_empty());
        // No tick: no contact, and a follower never proposes one.
        assert!(run(&mut c, 1_100, 50_000, RaftSample::default()).is_empty());
    }

    #[test]
    fn a_removed_node_stands_down_once_and_is_in_contact_with_nobody() {
        let mut c = contact();
        let removed = RaftSample {
            leader: true,
            quorum_ack_age: Some(Duration::ZERO),
            last_tick: Some(UnixTime::from_millis(49_900)),
            removed: true,
        };
        assert_eq!(
            run(&mut c, 1_000, 50_000, removed.clone()),
            vec![ContactOutput::StandDown]
        );
        assert!(c.stood_down());
        assert!(
            run(&mut c, 1_100, 50_100, removed).is_empty(),
            "no contact, no ticks, no second stand-down"
        );
    }
}
