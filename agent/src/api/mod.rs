//! Docker Engine API (swarm subset) on the local unix socket.
//!
//! The real `docker` CLI and the `apiary` CLI both talk to it. Every route
//! answers bare and under a `/v1.NN` prefix; the prefix is checked and
//! stripped before routing. Handlers only translate between HTTP/Docker JSON
//! and the [`Control`] seam; the mapping of failures to status codes lives in
//! [`error`].

pub mod error;
mod events;
pub mod images;
pub mod models;
mod networks;
mod routes;
mod services;

#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::ServiceExt;
use tokio_util::sync::CancellationToken;
use tower::Layer;

use crate::control::Control;
use error::ApiError;

pub use routes::{swarm_info_to_api, swarm_status};

/// The newest Engine API version we speak (docker CLI 28 negotiates down to it).
pub const API_VERSION: &str = "1.49";
/// The oldest we accept, as Docker 28 does.
pub const MIN_API_VERSION: &str = "1.24";

/// Serve the Engine API on `listener` until `shutdown` is cancelled.
pub async fn serve<C: Control>(
    listener: tokio::net::UnixListener,
    control: Arc<C>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::middleware::from_fn(common).layer(routes::router(control));
    axum::serve(listener, ServiceExt::<Request>::into_make_service(app))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// `(major, minor)` of an API version such as "1.49".
pub fn parse_api_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Splits `/v1.49/nodes` into `("1.49", "/nodes")`; `None` when the path has
/// no version prefix. The prefix is `/v` + digits and dots, like Docker's router.
pub fn split_version_prefix(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v")?;
    let end = rest.find('/').unwrap_or(rest.len());
    let (ver, tail) = rest.split_at(end);
    if ver.is_empty() || !ver.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Some((ver, if tail.is_empty() { "/" } else { tail }))
}

fn check_version(ver: &str) -> Result<(), ApiError> {
    let min = parse_api_version(MIN_API_VERSION).unwrap_or((1, 24));
    let max = parse_api_version(API_VERSION).unwrap_or((1, 49));
    let Some(v) = parse_api_version(ver) else {
        return Err(ApiError::bad_request(format!(
            "invalid API version {ver:?}"
        )));
    };
    if v < min {
        return Err(ApiError::bad_request(format!(
            "client version {ver} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    if v > max {
        return Err(ApiError::bad_request(format!(
            "client version {ver} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    Ok(())
}

/// Runs around every request, before routing: strips and checks the version
/// prefix, stamps Docker's headers, logs method, path and status (never bodies).
async fn common(mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = match split_version_prefix(&path) {
        Some((ver, rest)) => match check_version(ver) {
            Err(e) => e.into_response(),
            Ok(()) => {
                let pq = match req.uri().query() {
                    Some(q) => format!("{rest}?{q}"),
                    None => rest.to_string(),
                };
                match pq.parse::<Uri>() {
                    Ok(uri) => {
                        *req.uri_mut() = uri;
                        next.run(req).await
                    }
                    Err(_) => ApiError::bad_request("invalid request path").into_response(),
                }
            }
        },
        None => next.run(req).await,
    };
    let h = resp.headers_mut();
    h.insert("API-Version", HeaderValue::from_static(API_VERSION));
    h.insert("OSType", HeaderValue::from_static("linux"));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    if let Ok(server) =
        HeaderValue::from_str(&format!("Apiary/{} (linux)", env!("CARGO_PKG_VERSION")))
    {
        h.insert("Server", server);
    }
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "api request");
    resp
}
