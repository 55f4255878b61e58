//! When a node asks for a new certificate.

use std::time::{Duration, SystemTime};

/// Renewal happens in this slice of the validity window (Swarm's 50–80 %):
/// late enough not to churn, early enough to survive a manager outage, and
/// random so a fleet joined together does not renew together.
const RENEW_FROM_PERCENT: u128 = 50;
const RENEW_UNTIL_PERCENT: u128 = 80;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// When to renew: a uniformly random point between 50% and 80% of the validity window, as a delay from `now` (zero if already past).
pub fn renewal_delay(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    rng: &mut impl rand::Rng,
) -> Duration {
    let Ok(window) = not_after.duration_since(not_before) else {
        return Duration::ZERO;
    };
    let window = window.as_nanos();
    let lo = window * RENEW_FROM_PERCENT / 100;
    let hi = window * RENEW_UNTIL_PERCENT / 100;
    let offset = rng.gen_range(lo..=hi);
    // offset <= window, whose seconds came from a Duration, so they fit.
    let offset = Duration::new(
        u64::try_from(offset / NANOS_PER_SEC).unwrap_or(u64::MAX),
        (offset % NANOS_PER_SEC) as u32,
    );
    not_before
        .checked_add(offset)
        .and_then(|at| at.duration_since(now).ok())
        .unwrap_or(Duration::ZERO)
}
