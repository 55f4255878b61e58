//! `GET /events`: swarm events as Docker streams them, one JSON object per
//! line, with `since`, `until` and `filters` (type, event, scope, and the
//! object kinds by ID or name).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiResult};
use super::models::Filters;
use super::routes::query;
use crate::control::Control;
use crate::store::events::Event;

const FILTERS: [&str; 14] = [
    "config",
    "container",
    "daemon",
    "event",
    "image",
    "label",
    "network",
    "node",
    "plugin",
    "scope",
    "secret",
    "service",
    "type",
    "volume",
];

/// Docker's time parameters: unix seconds, with an optional fraction.
fn unix_nanos(what: &str, s: &str) -> ApiResult<i128> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let bad = || {
        ApiError::bad_request(format!(
            "invalid {what} value {s:?}: use unix seconds, like 1700000000 or 1700000000.5"
        ))
    };
    let secs: i128 = secs.parse().map_err(|_| bad())?;
    let mut nanos: i128 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        nanos = format!("{digits:0<9}").parse().map_err(|_| bad())?;
    }
    Ok(secs * 1_000_000_000 + nanos)
}

/// Does `e` pass every filter (values of one key OR-ed)?
pub fn matches(f: &Filters, e: &Event) -> bool {
    let any = |key: &str, ok: &dyn Fn(&str) -> bool| {
        let v = f.0.get(key).map(Vec::as_slice).unwrap_or(&[]);
        v.is_empty() || v.iter().any(|x| ok(x))
    };
    let name = e.attributes.get("name").map(String::as_str).unwrap_or("");
    let object = |kind: &'static str| {
        move |x: &str| {
            e.kind == kind && (e.id == x || name == x || (x.len() >= 3 && e.id.starts_with(x)))
        }
    };
    any("type", &|t| t == e.kind)
        && any("event", &|a| a == e.action)
        && any("scope", &|s| s == "swarm")
        && any("service", &object("service"))
        && any("node", &object("node"))
        && any("secret", &object("secret"))
        && any("config", &object("config"))
        && any("network", &object("network"))
        // Swarm events carry no container, image, volume, plugin, daemon
        // or label: such a filter matches none of them.
        && ["container", "image", "volume", "plugin", "daemon", "label"]
            .iter()
            .all(|k| !f.0.contains_key(*k))
}

/// An event as Docker's `events.Message`.
pub fn to_json(e: &Event) -> serde_json::Value {
    serde_json::json!({
        "Type": e.kind,
        "Action": e.action,
        "Actor": {"ID": e.id, "Attributes": e.attributes},
        "scope": "swarm",
        "time": (e.time_nano / 1_000_000_000) as i64,
        "timeNano": e.time_nano as i64,
    })
}

fn line(e: &Event) -> Bytes {
    let mut b = serde_json::to_vec(&to_json(e)).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

pub async fn events<C: Control>(State(c): State<Arc<C>>, uri: Uri) -> ApiResult<Response> {
    let q = query(&uri)?;
    let filters = Filters::parse(q.get("filters").map(String::as_str))?;
    filters.validate(&FILTERS)?;
    let since = match q.get("since").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(unix_nanos("since", s)?),
    };
    let until = match q.get("until").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(unix_nanos("until", s)?),
    };
    let (kept, live) = c.events().await?;
    let in_window = move |e: &Event| {
        since.is_none_or(|s| e.time_nano >= s) && until.is_none_or(|u| e.time_nano <= u)
    };
    // With no `since`, only events from now on (Docker's rule).
    let past: Vec<Bytes> = if since.is_some() {
        kept.iter()
            .filter(|e| in_window(e) && matches(&filters, e))
            .map(line)
            .collect()
    } else {
        Vec::new()
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    // An `until` in the past: the kept events are all there is.
    let follow = until.is_none_or(|u| u > now);
    let past = futures::stream::iter(past.into_iter().map(Ok::<_, std::convert::Infallible>));
    let body = if follow {
        let state = (live, filters, until);
        let next = futures::stream::unfold(state, move |(mut live, filters, until)| async move {
            loop {
                let wait = until.map(|u| {
                    let left = u - time::OffsetDateTime::now_utc().unix_timestamp_nanos();
                    std::time::Duration::from_nanos(left.max(0) as u64)
                });
                let got = match (&mut live, wait) {
                    (Some(rx), Some(w)) => match tokio::time::timeout(w, rx.recv()).await {
                        Ok(r) => Some(r),
                        Err(_) => return None,
                    },
                    (Some(rx), None) => Some(rx.recv().await),
                    (None, Some(w)) => {
                        tokio::time::sleep(w).await;
                        return None;
                    }
                    (None, None) => {
                        futures::future::pending::<()>().await;
                        None
                    }
                };
                match got {
                    Some(Ok(e)) if matches(&filters, &e) => {
                        return Some((Ok(line(&e)), (live, filters, until)))
                    }
                    Some(Ok(_)) => continue,
                    // Fell behind by more than the channel holds: go on
                    // with the newest rather than end the stream.
                    Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                    Some(Err(tokio::sync::broadcast::error::RecvError::Closed)) | None => {
                        return None
                    }
                }
            }
        });
        Body::from_stream(futures::StreamExt::chain(past, next))
    } else {
        Body::from_stream(past)
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
