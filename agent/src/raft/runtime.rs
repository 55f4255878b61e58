//! openraft's async runtime: tokio's, except for how long an append may
//! take.
//!
//! openraft 0.9 gives every AppendEntries exactly one heartbeat interval
//! (`replication::send_log_entries`: `timeout(heartbeat_interval, ..)`),
//! which ties a leader's heartbeat rate to the longest an append of a big
//! entry may take. With 150 ms heartbeats (for 1.3 s failovers) and both
//! cores of a board busy, a third of the appends of 100k tasks ran past
//! 150 ms and were sent again and again. Here an append gets until the
//! shortest election timeout instead: a follower still hears from its
//! leader before it would campaign, and heartbeats keep their rate.
//!
//! openraft passes nothing but the duration, so the appends' deadline is
//! recognised by being exactly the heartbeat interval, which nothing else
//! in openraft 0.9 waits for (its other timeouts are election timeouts,
//! snapshot timeouts and callers' own).

use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};

/// The raft heartbeat interval, in milliseconds.
pub const HEARTBEAT_MS: u64 = 150;
/// The shortest election timeout: how long an append may take.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 400;

fn deadline(d: Duration) -> Duration {
    if d == Duration::from_millis(HEARTBEAT_MS) {
        Duration::from_millis(ELECTION_TIMEOUT_MIN_MS)
    } else {
        d
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RaftRuntime;

type T = TokioRuntime;

impl AsyncRuntime for RaftRuntime {
    type JoinError = <T as AsyncRuntime>::JoinError;
    type JoinHandle<R: OptionalSend + 'static> = <T as AsyncRuntime>::JoinHandle<R>;
    type Sleep = <T as AsyncRuntime>::Sleep;
    type Instant = <T as AsyncRuntime>::Instant;
    type TimeoutError = <T as AsyncRuntime>::TimeoutError;
    type Timeout<R, F: Future<Output = R> + OptionalSend> = <T as AsyncRuntime>::Timeout<R, F>;
    type ThreadLocalRng = <T as AsyncRuntime>::ThreadLocalRng;
    type OneshotSender<V: OptionalSend> = <T as AsyncRuntime>::OneshotSender<V>;
    type OneshotReceiverError = <T as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<V: OptionalSend> = <T as AsyncRuntime>::OneshotReceiver<V>;

    fn spawn<F>(future: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + OptionalSend + 'static,
        F::Output: OptionalSend + 'static,
    {
        T::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        T::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        T::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        T::timeout(deadline(duration), future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        T::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        T::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        T::thread_rng()
    }

    fn oneshot<V>() -> (Self::OneshotSender<V>, Self::OneshotReceiver<V>)
    where
        V: OptionalSend,
    {
        T::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_append_gets_until_the_shortest_election_timeout_and_nothing_else_changes() {
        let hb = Duration::from_millis(HEARTBEAT_MS);
        let slow = tokio::time::sleep(Duration::from_millis(250));
        assert!(RaftRuntime::timeout(hb, slow).await.is_ok());
        let slower = tokio::time::sleep(Duration::from_millis(ELECTION_TIMEOUT_MIN_MS + 200));
        assert!(RaftRuntime::timeout(hb, slower).await.is_err());
        let other = tokio::time::sleep(Duration::from_millis(250));
        assert!(RaftRuntime::timeout(Duration::from_millis(100), other)
            .await
            .is_err());
    }
}
