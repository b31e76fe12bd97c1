//! The command line (SPEC §2). Exit codes: 0 ok, 1 runtime failure, 2 bad
//! usage or invalid config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{error, info};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::telemetry::{self, LogFormat};

/// weir, an AI gateway.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The config file; default `./weir.toml`, else the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value = "auto")]
        log_format: LogFormat,
        /// Override `[server] listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Override `[server] admin_listen`.
        #[arg(long)]
        admin_listen: Option<String>,
    },
    /// Validate a config file: exit 0, or 2 with every problem listed.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Run the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve {
            config,
            log_format,
            listen,
            admin_listen,
        } => serve(config, log_format, listen, admin_listen),
        Command::Check { config } => check(&config),
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} providers, {} models, {} keys, {} policies)",
                path.display(),
                config.providers.len(),
                config.models.len(),
                config.keys.len(),
                config.policies.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
}

fn serve(
    path: Option<PathBuf>,
    log_format: LogFormat,
    listen: Option<String>,
    admin_listen: Option<String>,
) -> ExitCode {
    telemetry::init(log_format);
    let path = path.or_else(|| {
        let local = PathBuf::from("weir.toml");
        local.exists().then_some(local)
    });
    let config = match &path {
        Some(path) => Config::load(path),
        None => Config::embedded(),
    };
    let config = config.and_then(|c| c.with_listeners(listen, admin_listen));
    let config = match config {
        Ok(config) => config,
        Err(errors) => {
            error!("{errors}");
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    match &path {
        Some(path) => info!(config = %path.display(), "configuration loaded"),
        None => info!(
            "no config given and no ./weir.toml: serving the embedded default (mock provider)"
        ),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let metrics = crate::metrics::install()?;
        let gateway = Gateway::new(config, Some(metrics))?;
        crate::server::run(gateway).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "the gateway stopped");
            ExitCode::from(1)
        }
    }
}
