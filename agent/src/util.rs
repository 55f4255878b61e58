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
    /// Set while `exit_on_panic` runs its closure on this thread: what to
    /// tell the user if it panics.
    static ON_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Run `f`, for third-party code that panics on input it should refuse
/// (redb on a damaged file): if it panics, the agent's panic hook prints
/// `what` and the panic's message as one error line and exits 1, instead
/// of aborting with a backtrace that names neither the file nor the way
/// out. (Catching the panic would need unwinding, 3.4 MB of the static
/// binary.)
pub fn exit_on_panic<R>(what: String, f: impl FnOnce() -> R) -> R {
    ON_PANIC.with(|c| *c.borrow_mut() = Some(what));
    let r = f();
    ON_PANIC.with(|c| *c.borrow_mut() = None);
    r
}

/// What `exit_on_panic` said to tell, if it runs on this thread.
pub fn panic_context() -> Option<String> {
    ON_PANIC.with(|c| c.borrow().clone())
}

/// A panic's message.
pub fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let p = info.payload();
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
