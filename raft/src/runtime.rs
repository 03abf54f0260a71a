//! [`SeededRuntime`]: openraft's tokio runtime with one change — the RNG openraft draws election
//! timeouts from is a seeded ChaCha20 stream instead of `rand::thread_rng()`, so a simulator run
//! is reproducible from its seed (research/deps.md §2, style-anchors.md B5).
//!
//! Seeding: the simulator calls [`seed_this_thread`] before it builds a cluster. The production
//! shell calls [`set_process_seed`] once with OS entropy; every tokio worker thread then derives
//! its own stream from it. A thread that was never seeded derives from the process seed (or a
//! fixed one if there is none, which only tests that don't care about timing hit).

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use rand_chacha::ChaCha20Rng;
use wire::Seed;

thread_local! {
    static RNG: RefCell<Option<ChaCha20Rng>> = const { RefCell::new(None) };
}

static PROCESS_SEED: Mutex<Option<Seed>> = Mutex::new(None);
static THREADS_SEEDED: AtomicU64 = AtomicU64::new(0);

/// Seeds the election RNG of the current thread (the simulator's single thread).
pub fn seed_this_thread(seed: Seed) {
    RNG.with(|r| *r.borrow_mut() = Some(seed.rng()));
}

/// Sets the seed every not-yet-seeded thread derives its stream from (production: OS entropy).
pub fn set_process_seed(seed: Seed) {
    *PROCESS_SEED.lock().unwrap_or_else(|p| p.into_inner()) = Some(seed);
}

fn with_rng<R>(f: impl FnOnce(&mut ChaCha20Rng) -> R) -> R {
    RNG.with(|cell| {
        let mut slot = cell.borrow_mut();
        let rng = slot.get_or_insert_with(|| {
            let root = PROCESS_SEED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(Seed::from_u64(0x0051_6711));
            let n = THREADS_SEEDED.fetch_add(1, Ordering::Relaxed);
            root.child("raft-thread").child(&n.to_string()).rng()
        });
        f(rng)
    })
}

/// A handle on the current thread's seeded RNG (what openraft's `thread_rng()` returns).
#[derive(Debug, Clone, Copy, Default)]
pub struct SeededRng;

impl rand::RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        with_rng(|r| r.next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        with_rng(|r| r.next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        with_rng(|r| r.fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        with_rng(|r| r.fill_bytes(dest));
        Ok(())
    }
}

/// openraft's async runtime: tokio for everything, [`SeededRng`] for randomness.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeededRuntime;

impl AsyncRuntime for SeededRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = SeededRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        // openraft's own tasks (core, replication, snapshot): the runtime seam for Raft itself.
        #[allow(clippy::disallowed_methods)]
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SeededRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn same_seed_same_stream() {
        seed_this_thread(Seed::from_u64(3));
        let a: Vec<u64> = (0..4).map(|_| SeededRng.next_u64()).collect();
        seed_this_thread(Seed::from_u64(3));
        let b: Vec<u64> = (0..4).map(|_| SeededRng.next_u64()).collect();
        assert_eq!(a, b);
        seed_this_thread(Seed::from_u64(4));
        assert_ne!(SeededRng.next_u64(), a[0]);
    }
}
