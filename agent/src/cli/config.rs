//! `apiary config ...`: create, ls, inspect, rm (docker's `config` commands).

use clap::Subcommand;

use super::objects::{self, CreateArgs, InspectArgs, Kind, LsArgs, RmArgs};
use super::{CliError, Client, Output};

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Create a config from a file or STDIN
    Create(CreateArgs),
    /// Display detailed information on one or more configs
    Inspect(InspectArgs),
    /// List configs
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Remove one or more configs
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

pub async fn run(c: &mut Client, cmd: ConfigCommand, out: &mut Output) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Create(a) => {
            let data = objects::read_data(&a.file, &mut std::io::stdin())?;
            objects::create(c, Kind::Config, a, data, out).await
        }
        ConfigCommand::Inspect(a) => objects::inspect(c, Kind::Config, a, out).await,
        ConfigCommand::Ls(a) => objects::ls(c, Kind::Config, a, out).await,
        ConfigCommand::Rm(a) => objects::rm(c, Kind::Config, a, out).await,
    }
}
