//! The one place where failures become Docker's HTTP answers:
//! `{"message": "..."}` with Docker's status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bollard_stubs::models::ErrorResponse;

use crate::control::ControlError;

/// An error answer of the Engine API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    /// Bad input from the caller (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

/// Docker's status code for each kind of control failure.
pub fn status_of(err: &ControlError) -> StatusCode {
    match err {
        ControlError::NotInSwarm
        | ControlError::NotManager
        | ControlError::AlreadyInSwarm
        | ControlError::Locked
        | ControlError::NoQuorum(_)
        | ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::InvalidArgument(_) | ControlError::FailedPrecondition(_) => {
            StatusCode::BAD_REQUEST
        }
        ControlError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ControlError> for ApiError {
    fn from(err: ControlError) -> Self {
        ApiError {
            status: status_of(&err),
            message: err.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorResponse {
                message: self.message,
            }),
        )
            .into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn control_errors_map_to_docker_codes() {
        let cases = [
            (ControlError::NotInSwarm, 503),
            (ControlError::NotManager, 503),
            (ControlError::AlreadyInSwarm, 503),
            (ControlError::Locked, 503),
            (ControlError::NoQuorum("q".into()), 503),
            (ControlError::Unavailable("u".into()), 503),
            (ControlError::NotFound("n".into()), 404),
            (ControlError::Conflict("c".into()), 409),
            (ControlError::InvalidArgument("i".into()), 400),
            (ControlError::FailedPrecondition("f".into()), 400),
            (ControlError::Unauthorized("a".into()), 401),
            (ControlError::Internal("x".into()), 500),
        ];
        for (err, code) in cases {
            let api = ApiError::from(err.clone());
            assert_eq!(api.status.as_u16(), code, "{err:?}");
            assert_eq!(api.message, err.to_string());
        }
    }
}
