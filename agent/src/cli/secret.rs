//! `apiary secret ...`: create, ls, inspect, rm (docker's `secret` commands).

use clap::Subcommand;

use super::objects::{self, CreateArgs, InspectArgs, Kind, LsArgs, RmArgs};
use super::{CliError, Client, Output};

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Create a secret from a file or STDIN as content
    Create(CreateArgs),
    /// Display detailed information on one or more secrets
    Inspect(InspectArgs),
    /// List secrets
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Remove one or more secrets
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

pub async fn run(c: &mut Client, cmd: SecretCommand, out: &mut Output) -> Result<(), CliError> {
    match cmd {
        SecretCommand::Create(a) => {
            let data = objects::read_data(&a.file, &mut std::io::stdin())?;
            objects::create(c, Kind::Secret, a, data, out).await
        }
        SecretCommand::Inspect(a) => objects::inspect(c, Kind::Secret, a, out).await,
        SecretCommand::Ls(a) => objects::ls(c, Kind::Secret, a, out).await,
        SecretCommand::Rm(a) => objects::rm(c, Kind::Secret, a, out).await,
    }
}
