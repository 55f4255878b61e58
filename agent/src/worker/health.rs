//! A task's health, as Docker keeps a container's (`daemon/health.go`):
//! the probe runs every interval (every start interval while the start
//! period lasts and the container has not yet been healthy); a success
//! makes it healthy; `retries` failures in a row make it unhealthy, but
//! failures inside the start period do not count until it has once been
//! healthy. Swarm keeps a task in `starting` until its container is
//! healthy and fails it when it turns unhealthy; `run_task` does that with
//! the transitions [`watch`] sends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::debug;

use crate::executor::health::Probe;
use crate::executor::Executor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// The pure part: what each probe result makes of the container's health.
#[derive(Debug)]
pub struct Monitor {
    probe: Probe,
    started: Instant,
    failures: u32,
    /// None until the first transition ("starting").
    state: Option<Health>,
    /// Healthy at least once: start-period failures count from then on.
    was_healthy: bool,
}

impl Monitor {
    pub fn new(probe: Probe, started: Instant) -> Monitor {
        Monitor {
            probe,
            started,
            failures: 0,
            state: None,
            was_healthy: false,
        }
    }

    fn in_start_period(&self, now: Instant) -> bool {
        now.duration_since(self.started) < self.probe.start_period
    }

    /// How long until the next probe, counted from `now`.
    pub fn next_in(&self, now: Instant) -> Duration {
        if !self.was_healthy && self.in_start_period(now) {
            self.probe.start_interval
        } else {
            self.probe.interval
        }
    }

    /// Take a probe's result; the new health if it changed.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<Health> {
        let next = if ok {
            self.failures = 0;
            self.was_healthy = true;
            Health::Healthy
        } else {
            if self.in_start_period(now) && !self.was_healthy {
                return None;
            }
            self.failures += 1;
            if self.failures < self.probe.retries.max(1) {
                return None;
            }
            Health::Unhealthy
        };
        if self.state == Some(next) {
            return None;
        }
        self.state = Some(next);
        Some(next)
    }
}

/// A running [`watch`], stopped when dropped (the task's runner ends).
pub struct Watcher(tokio::task::JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Start watching container `id`'s health: the watcher and its changes.
pub fn spawn(
    ex: Arc<dyn Executor>,
    id: &str,
    probe: Probe,
) -> (Watcher, mpsc::UnboundedReceiver<Health>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let w = tokio::spawn(watch(ex, id.to_string(), probe, tx));
    (Watcher(w), rx)
}

/// Probe container `id` until it turns unhealthy (or the receiver goes),
/// sending each change of health. Started when the container started.
async fn watch(
    ex: Arc<dyn Executor>,
    id: String,
    probe: Probe,
    changes: mpsc::UnboundedSender<Health>,
) {
    let argv = probe.argv.clone();
    let timeout = probe.timeout;
    let mut m = Monitor::new(probe, Instant::now());
    loop {
        tokio::time::sleep(m.next_in(Instant::now())).await;
        let ok = match ex.exec(&id, &argv, timeout).await {
            Ok(code) => code == 0,
            Err(e) => {
                debug!(container = %id, "health probe: {e}");
                false
            }
        };
        if let Some(h) = m.record(ok, Instant::now()) {
            debug!(container = %id, health = ?h, "health changed");
            if changes.send(h).is_err() || h == Health::Unhealthy {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(start_period: u64, retries: u32) -> Probe {
        Probe {
            argv: vec!["true".into()],
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            start_period: Duration::from_secs(start_period),
            start_interval: Duration::from_secs(5),
            retries,
        }
    }

    #[test]
    fn a_success_makes_it_healthy_once() {
        let t0 = Instant::now();
        let mut m = Monitor::new(probe(0, 3), t0);
        assert_eq!(m.record(true, t0), Some(Health::Healthy));
        assert_eq!(m.record(true, t0), None, "no change, no news");
    }

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy() {
        let t0 = Instant::now();
        let mut m = Monitor::new(probe(0, 3), t0);
        assert_eq!(m.record(true, t0), Some(Health::Healthy));
        assert_eq!(m.record(false, t0), None);
        assert_eq!(m.record(false, t0), None);
        assert_eq!(m.record(true, t0), None, "a success starts the count again");
        assert_eq!(m.record(false, t0), None);
        assert_eq!(m.record(false, t0), None);
        assert_eq!(m.record(false, t0), Some(Health::Unhealthy));
    }

    #[test]
    fn start_period_failures_do_not_count_until_healthy() {
        let t0 = Instant::now();
        let mut m = Monitor::new(probe(60, 1), t0);
        let early = t0 + Duration::from_secs(10);
        assert_eq!(m.next_in(early), Duration::from_secs(5), "start interval");
        assert_eq!(m.record(false, early), None);
        assert_eq!(m.record(false, early), None);
        let late = t0 + Duration::from_secs(61);
        assert_eq!(m.next_in(late), Duration::from_secs(30));
        assert_eq!(m.record(false, late), Some(Health::Unhealthy));

        let mut m = Monitor::new(probe(60, 1), t0);
        assert_eq!(m.record(true, early), Some(Health::Healthy));
        assert_eq!(
            m.next_in(early),
            Duration::from_secs(30),
            "healthy: interval"
        );
        assert_eq!(
            m.record(false, early),
            Some(Health::Unhealthy),
            "once healthy, start-period failures count"
        );
    }
}
