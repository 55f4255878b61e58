//! The agent under systemd (`systemd/apiary.service`, `Type=notify`):
//! readiness, status lines and the watchdog over the notify protocol
//! (the sd-notify crate), and log lines journald files by priority.
//! Outside systemd (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`, no
//! `JOURNAL_STREAM`) every call here does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

use crate::control::Control;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify: {e}");
    }
}

/// Startup is done: the API socket serves and the node has resumed what
/// its data dir holds.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// One line saying where the node stands, for `systemctl status`.
pub async fn describe<C: Control>(node: &C) -> String {
    let info = node.swarm_info().await;
    let role = if info.is_manager { "manager" } else { "worker" };
    match info.node_id {
        Some(id) => format!("swarm {}: {role} {id}", info.state.as_str()),
        None => format!("swarm {}", info.state.as_str()),
    }
}

/// With `WatchdogSec=`: ping at half the period, each time after the node
/// has answered a status question within the other half — a runtime that
/// still ticks but whose node is stuck (a lock never released, a store
/// that hangs) stops pinging, and systemd restarts the agent.
pub fn watchdog<C: Control + 'static>(node: std::sync::Arc<C>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let half = period / 2;
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            tokio::time::sleep(half).await;
            match tokio::time::timeout(half.max(Duration::from_millis(100)), describe(&*node)).await {
                Ok(now) => {
                    if now != last {
                        status(&now);
                        last = now;
                    }
                    send(&[NotifyState::Watchdog]);
                }
                Err(_) => warn!(
                    "the node did not answer a status question within {half:?}: not pinging the watchdog"
                ),
            }
        }
    });
}

/// Is stderr the journal? systemd sets `JOURNAL_STREAM` to its
/// `device:inode` for a unit's standard streams; a child that inherited
/// the variable but writes elsewhere does not match.
pub fn logs_to_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        // No /proc to check against: trust the variable.
        Err(_) => true,
    }
}

/// Log lines as journald reads them from a stream: `<N>` for the
/// priority (syslog's: 3 error, 4 warning, 6 info, 7 debug), no
/// timestamp (the journal has its own), no colours.
pub struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let prio = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{prio}>")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
