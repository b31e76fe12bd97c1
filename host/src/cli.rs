//! The command line (SPEC §2). Exit codes: 0 ok, 1 runtime failure, 2 bad
//! usage or invalid config.

/// `println!` that does not panic when stdout is gone (`weir policy
/// inspect x.wasm | head`): the output simply stops.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod policy_test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing::{error, info};

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::gateway::Gateway;
use crate::gateway::policies::{self, PolicySet};
use crate::policy::{EngineOptions, KvStore, MemoryKv, PolicyRuntime};
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
    /// Validate a config file and type-check its policies: exit 0, or 2 with
    /// every problem listed.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Policy author tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Which worlds a component implements and what it imports.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a guardrail offline over recorded requests and chunks.
    Test {
        file: PathBuf,
        /// JSON Lines: one case per line (see docs/policies.md).
        #[arg(long)]
        cases: PathBuf,
        /// The policy's `config`, as JSON.
        #[arg(long, default_value = "{}")]
        policy_config: String,
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
        Command::Policy { command } => match command {
            PolicyCommand::Inspect { file, json } => policy_test::inspect(&file, json),
            PolicyCommand::Test {
                file,
                cases,
                policy_config,
            } => policy_test::run(&file, &cases, &policy_config),
        },
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            None
        }
    }
}

/// The policy engine for `config`; policies' key-value store is `kv`.
fn policy_runtime(config: &Config, kv: Arc<dyn KvStore>) -> anyhow::Result<Arc<PolicyRuntime>> {
    let options = EngineOptions {
        instances: config.server.policy_instances,
        ..EngineOptions::default()
    };
    PolicyRuntime::new(&options, kv)
}

/// Load the config's policies, or every load error as config errors.
async fn load_policies(
    runtime: &Arc<PolicyRuntime>,
    config: &Config,
    file: &str,
) -> Result<PolicySet, ConfigErrors> {
    match policies::load_all(runtime, config, None).await {
        Ok((set, _)) => Ok(set),
        Err(failures) => Err(ConfigErrors {
            file: file.to_string(),
            errors: failures
                .into_iter()
                .map(|f| ConfigError {
                    key: format!("policies[{}].path", f.index),
                    reason: format!("{}: {}", f.path.display(), f.error),
                })
                .collect(),
        }),
    }
}

fn check(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let Some(rt) = runtime() else {
        return ExitCode::from(1);
    };
    let loaded = rt.block_on(async {
        let runtime = policy_runtime(&config, Arc::new(MemoryKv::default()))?;
        Ok::<_, anyhow::Error>(load_policies(&runtime, &config, &path.display().to_string()).await)
    });
    match loaded {
        Ok(Ok(_)) => {
            say!(
                "{}: ok ({} providers, {} models, {} keys, {} policies)",
                path.display(),
                config.providers.len(),
                config.models.len(),
                config.keys.len(),
                config.policies.len()
            );
            ExitCode::SUCCESS
        }
        Ok(Err(errors)) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("cannot start the policy engine: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Where the README's build puts the bundled policies: `$WEIR_POLICY_DIR`,
/// `target/policies` next to the binary's folder, or under the current one.
fn bundled_policies_dir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("WEIR_POLICY_DIR") {
        candidates.push(PathBuf::from(dir));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(exe_dir.join("../policies"));
    }
    candidates.push(PathBuf::from("target/policies"));
    candidates
        .into_iter()
        .find(|d| d.join("pii-redact.wasm").is_file())
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
    let bundled = if path.is_none() {
        bundled_policies_dir()
    } else {
        None
    };
    let config = match &path {
        Some(path) => Config::load(path),
        None => Config::embedded(bundled.as_deref()),
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
    match (&path, &bundled) {
        (Some(path), _) => info!(config = %path.display(), "configuration loaded"),
        (None, Some(dir)) => info!(
            policies = %dir.display(),
            "no config given and no ./weir.toml: serving the embedded default (mock provider, bundled guardrails)"
        ),
        (None, None) => info!(
            "no config given and no ./weir.toml: serving the embedded default (mock provider; build the policies for the bundled guardrails)"
        ),
    }
    let Some(rt) = runtime() else {
        return ExitCode::from(1);
    };
    let file = path.as_ref().map_or_else(
        || "<embedded default>".to_string(),
        |p| p.display().to_string(),
    );
    let result = rt.block_on(async {
        let metrics = crate::metrics::install()?;
        let ledger = crate::state::open(&config).await?;
        info!(backend = ?config.state.backend, "state backend ready");
        let runtime = policy_runtime(&config, ledger.kv())?;
        let policies = match load_policies(&runtime, &config, &file).await {
            Ok(set) => set,
            Err(errors) => return Ok(Err(errors)),
        };
        let gateway = Gateway::new(config, Some(metrics), runtime, policies, ledger)?;
        crate::server::run(gateway).await.map(Ok)
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(errors)) => {
            error!("{errors}");
            eprintln!("{errors}");
            ExitCode::from(2)
        }
        Err(e) => {
            error!(error = format!("{e:#}"), "the gateway stopped");
            ExitCode::from(1)
        }
    }
}
