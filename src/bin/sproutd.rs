//! sproutd: parse arguments, load the config, start logging, run the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sprout::config::{Config, ConfigError};

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
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the config and report every error, then exit.
    CheckConfig,
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
    if let Some(Cmd::CheckConfig) = args.command {
        // The token file it names, as start-up would read it.
        if let Err(e) = sprout::daemon::read_token(&config) {
            eprintln!("sproutd: config error: {e}");
            return ExitCode::from(2);
        }
        println!("config OK: model {} on {}", config.model.name, config.listen);
        return ExitCode::SUCCESS;
    }
    match serve(config, args.listen, args.data_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sproutd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(mut config: Config, listen: Option<String>, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(l) = listen {
        config.listen = l.parse().with_context(|| format!("--listen {l:?} is not an ADDR:PORT socket address"))?;
    }
    if let Some(d) = data_dir {
        config.data_dir = d;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        sprout::daemon::run(config, listener, shutdown_signal()).await?;
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
