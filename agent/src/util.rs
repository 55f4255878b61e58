//! Small shared helpers.

use std::time::SystemTime;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// RFC 3339 with nanoseconds, like Docker's timestamps.
pub fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t).format(&Rfc3339).unwrap_or_default()
}

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

thread_local! {
    /// Set while `catch_panic` runs its closure on this thread.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Is a `catch_panic` running on this thread? The agent's panic hook lets
/// such a panic unwind to it; every other panic ends the process, as it
/// always has (a task that panicked must not be swallowed by the runtime
/// while the rest serves on).
pub fn catching_panic() -> bool {
    CATCHING.with(|c| c.get())
}

/// Run `f`, turning a panic inside it into an error with the panic's
/// message: for third-party code that panics on input it should refuse
/// (redb on a damaged file), so that the user gets one message naming the
/// file and the way out instead of an abort.
pub fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    CATCHING.with(|c| c.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(false));
    r.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}
