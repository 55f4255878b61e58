//! The `apiary` binary: `apiary agent` runs the daemon; every other command
//! is a client of a running agent's Engine API socket.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "apiary",
    version,
    about = "Docker Swarm mode as one static agent for the edge"
)]
struct Cli {
    /// Agent socket to talk to (unix:///path); default /run/apiary/apiary.sock.
    #[arg(short = 'H', long = "host", env = "APIARY_HOST", global = true)]
    host: Option<String>,
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Run the apiary daemon on this node.
    Agent(apiary::agent::AgentArgs),
    #[command(flatten)]
    Client(apiary::cli::Command),
}

fn main() -> ExitCode {
    // containerd's runc shim starts `apiary __log-driver <file>` for each
    // task (see executor::logdriver): no clap, no runtime, no tracing.
    let mut argv = std::env::args_os().skip(1);
    if argv.next().as_deref() == Some(std::ffi::OsStr::new(apiary::executor::logdriver::ARG)) {
        let Some(path) = argv.next() else {
            eprintln!(
                "usage: apiary {} <log file>",
                apiary::executor::logdriver::ARG
            );
            return ExitCode::FAILURE;
        };
        let code = apiary::executor::logdriver::run(std::path::Path::new(&path));
        return ExitCode::from(code as u8);
    }
    // A dependency that panics where it should have refused its input
    // (redb on a damaged file) is reported as one error line, exit 1
    // (`util::exit_on_panic`); any other panic keeps the default report.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| match apiary::util::panic_context() {
        Some(what) => {
            let why = apiary::util::panic_message(info);
            tracing::error!("{what} ({why})");
            eprintln!("error: {what} ({why})");
            std::process::exit(1);
        }
        None => default_hook(info),
    }));
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.cmd {
        Top::Agent(args) => {
            if let Err(e) = init_tracing(&args.log_level) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            if let Err(e) = rustls::crypto::ring::default_provider().install_default() {
                tracing::debug!("crypto provider already installed: {e:?}");
            }
            match rt.block_on(apiary::agent::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Top::Client(cmd) => rt.block_on(apiary::cli::run(cli.host, cmd)),
    }
}

/// The log filter: RUST_LOG if set, else `--log-level` (APIARY_LOG).
/// Directives are `level` and `target=level`, comma-separated; one that
/// does not parse is an error naming it, not silently dropped.
fn init_tracing(default: &str) -> Result<(), String> {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (source, text) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => ("RUST_LOG", v),
        _ => ("--log-level", default.to_string()),
    };
    let filter: Targets = text.parse().map_err(|e| {
        format!("{source} {text:?}: {e} (use levels such as \"info\" or \"info,apiary=debug\")")
    })?;
    let registry = tracing_subscriber::registry().with(filter);
    if apiary::systemd::logs_to_journal() {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(apiary::systemd::JournalFormat)
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    // Colours on a terminal only, not in a log file.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .init();
    }
    Ok(())
}
