//! sproutd: parse arguments, load the config, start logging, run the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sprout::config::{Config, ConfigError};
use sprout::daemon::DaemonError;
use sprout::store::StoreError;

#[derive(Parser)]
#[command(name = "sproutd", version, about = "Carbon-aware LLM inference daemon")]
struct Args {
    /// Config file (default: the built-in default config, paths relative to the working directory).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Listen on ADDR:PORT instead of server.listen.
    #[arg(long)]
    listen: Option<String>,
    /// Keep the job store in DIR instead of storage.data_dir.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Serve a store that lost acknowledged jobs (start-up otherwise refuses, naming them).
    #[arg(long)]
    accept_missing_jobs: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the config and report every error, then exit.
    CheckConfig,
    /// Look at the job store without changing it (works on a copy).
    Store {
        #[command(subcommand)]
        command: StoreCmd,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Read every record, check the indexes and that no acknowledged job is missing; exit 1 if anything is wrong.
    Verify,
    /// Every job and ledger record as JSON lines on stdout (for backup, or to move to a new store).
    Export,
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default_config()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,mistralrs_core=warn,mistralrs=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    // Under systemd the journal stamps each line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().init();
    } else {
        logs.init();
    }
    let config = match load_config(args.config.as_ref()) {
        Ok(c) => c,
        Err(ConfigError::Invalid(errs)) => {
            for e in &errs.0 {
                eprintln!("sproutd: config error: {e}");
            }
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("sproutd: {e}");
            return ExitCode::from(2);
        }
    };
    // The token file and the model file it names, as start-up reads them.
    if !matches!(args.command, Some(Cmd::Store { .. })) {
        if let Err(e) = sprout::daemon::preflight(&config) {
            eprintln!("sproutd: config error: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(Cmd::CheckConfig) = args.command {
        println!("config OK: model {} on {}", config.model.name, config.listen);
        return ExitCode::SUCCESS;
    }
    let mut config = config;
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(Cmd::Store { command }) = args.command {
        return store(&config, command);
    }
    match serve(config, args.config.clone(), args.listen, args.accept_missing_jobs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sproutd: {e:#}");
            // A store that cannot be served as it is: restarting will not help (systemd: RestartPreventExitStatus).
            let refused = matches!(
                e.downcast_ref::<DaemonError>(),
                Some(DaemonError::Store(StoreError::Missing { .. } | StoreError::Damaged { .. }))
            );
            if refused { ExitCode::from(3) } else { ExitCode::FAILURE }
        }
    }
}

fn store(config: &Config, command: StoreCmd) -> ExitCode {
    let (dir, timeout) = (&config.data_dir, config.store_open_timeout);
    match command {
        StoreCmd::Verify => match sprout::store::admin::verify(dir, timeout) {
            Ok((report, whole)) => {
                print!("{report}");
                if whole { ExitCode::SUCCESS } else { ExitCode::FAILURE }
            }
            Err(e) => {
                eprintln!("sproutd: {e}");
                ExitCode::FAILURE
            }
        },
        StoreCmd::Export => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match sprout::store::admin::export(dir, timeout, &mut out) {
                Ok((written, skipped, missing)) => {
                    eprintln!("sproutd: exported {written} records, skipped {skipped} unreadable ones");
                    if let Some(m) = missing {
                        eprintln!("sproutd: {m}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sproutd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(mut config: Config, config_path: Option<PathBuf>, listen: Option<String>, accept_missing_jobs: bool) -> anyhow::Result<()> {
    if let Some(l) = listen {
        config.listen = l.parse().with_context(|| format!("--listen {l:?} is not an ADDR:PORT socket address"))?;
    }
    // The store first: the port is bound only once it is open.
    let store = sprout::store::Store::open_bounded(&config.data_dir, config.store_open_timeout, accept_missing_jobs).map_err(DaemonError::from)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        sprout::daemon::run(config, config_path, store, listener, sprout::clock::Clock::system(), shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
