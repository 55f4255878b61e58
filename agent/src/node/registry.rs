//! Registries on the node's side of the API: logins, `/distribution`
//! look-ups and the mapping of registry failures to control errors (and so
//! to Docker's status codes).

use std::time::Duration;

use crate::control::{ControlError, ControlResult};
use crate::executor::pull::auth::{self, LoginError};
use crate::executor::pull::{
    self, AuthConfig, Credentials, Distribution, PullError, RegistryConfig,
};
use crate::executor::ExecError;

/// How long a registry gets to answer a look-up or a login (dockerd's
/// login client allows 15 s too). `docker service create` waits for
/// `/distribution` before it creates the service: a registry that does not
/// answer by then costs the service its pinned digest (the CLI warns and
/// goes on), not the user's patience.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(15);

/// The credentials in a client's `AuthConfig`, if any.
pub fn credentials(auth: Option<&AuthConfig>) -> ControlResult<Option<Credentials>> {
    match auth {
        None => Ok(None),
        Some(a) => a
            .credentials()
            .map_err(|e| ControlError::InvalidArgument(e.to_string())),
    }
}

/// A registry failure as a control error: a missing image is 404, refused
/// credentials 401, a bad reference 400, the rest the registry's (or
/// containerd's) trouble.
pub fn pull_error(e: PullError) -> ControlError {
    match e {
        PullError::InvalidReference(_) => ControlError::InvalidArgument(e.to_string()),
        PullError::Unauthorized { .. } => ControlError::Unauthorized(e.to_string()),
        PullError::Registry { status: 404, .. } => ControlError::NotFound(e.to_string()),
        PullError::Store(ExecError::Image(m)) | PullError::Store(ExecError::InvalidSpec(m)) => {
            ControlError::InvalidArgument(m)
        }
        e => ControlError::Unavailable(e.to_string()),
    }
}

pub async fn distribution(
    registries: &RegistryConfig,
    reference: &str,
    auth: Option<&AuthConfig>,
) -> ControlResult<Distribution> {
    let creds = credentials(auth)?;
    match tokio::time::timeout(
        REGISTRY_TIMEOUT,
        pull::inspect(reference, registries, creds.as_ref()),
    )
    .await
    {
        Ok(r) => r.map_err(pull_error),
        Err(_) => Err(ControlError::Unavailable(format!(
            "the registry of {reference} did not answer within {} s",
            REGISTRY_TIMEOUT.as_secs()
        ))),
    }
}

pub async fn login(registries: &RegistryConfig, auth: &AuthConfig) -> ControlResult<()> {
    let creds = credentials(Some(auth))?.ok_or_else(|| {
        ControlError::InvalidArgument(
            "no credentials given: a login needs a user name and password (or a token)".into(),
        )
    })?;
    let server = &auth.serveraddress;
    match tokio::time::timeout(REGISTRY_TIMEOUT, auth::login(server, &creds, registries)).await {
        Ok(r) => r.map_err(|e| match e {
            LoginError::Refused(m) => ControlError::Unauthorized(m),
            LoginError::InvalidServer(m) => ControlError::InvalidArgument(m),
            LoginError::Failed(e) => pull_error(e),
        }),
        Err(_) => Err(ControlError::Unavailable(format!(
            "the registry {} did not answer the login within {} s",
            auth::registry_of_server(server),
            REGISTRY_TIMEOUT.as_secs()
        ))),
    }
}
