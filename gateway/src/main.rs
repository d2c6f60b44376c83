//! The `palisade` binary: parse the command line, set up logging, run the subcommand.

use anyhow::Context;
use clap::Parser;
use palisade::app::Gateway;
use palisade::cli::{Cli, Command};
use palisade::plugins::Overrides;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own story; its log stays quiet unless asked for with RUST_LOG.
    let default = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve {
            config,
            listen,
            upstream_url,
            database,
        } => {
            serve(
                config,
                listen,
                Overrides {
                    upstream_url,
                    database,
                    ..Overrides::default()
                },
            )
            .await
        }
        Command::Check { config } => Ok(palisade::cli::check::run(&config).await?),
        Command::Demo {
            config,
            listen,
            keep,
        } => palisade::demo::run(&config, listen, keep)
            .await
            .map_err(anyhow::Error::from),
        Command::Init { config, admin } => Ok(palisade::cli::init::run(&config, &admin).await?),
        Command::Agents { api, command } => Ok(palisade::cli::admin::agents(&api, command).await?),
        Command::Users { api, command } => Ok(palisade::cli::admin::users(&api, command).await?),
        Command::Approvals { api, command } => {
            Ok(palisade::cli::approvals::run(&api, command).await?)
        }
        Command::Plugin { command } => Ok(palisade::cli::plugin::run(command).await?),
        Command::Audit { api, command } => Ok(palisade::cli::admin::audit(&api, command).await?),
        Command::Spend {
            api,
            window,
            scope,
            run,
        } => Ok(palisade::cli::admin::spend(&api, &window, &scope, run.as_deref()).await?),
    }
}

async fn serve(
    config: std::path::PathBuf,
    listen: Option<std::net::SocketAddr>,
    overrides: Overrides,
) -> anyhow::Result<()> {
    let gw = Gateway::start(&config, overrides)
        .await
        .with_context(|| format!("cannot start with {}", config.display()))?;
    let rt = gw.policy.current();
    let _watcher = if rt.settings.host.watch {
        Some(
            gw.policy
                .watch()
                .context("cannot watch the config and plugin files")?,
        )
    } else {
        None
    };
    let open_files = palisade::server::raise_open_files_limit();
    let addr = listen.unwrap_or(rt.settings.listen);
    let (listener, local) = palisade::server::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let scheme = if rt.tls.is_some() { "https" } else { "http" };
    tracing::info!(
        policy_version = %rt.chain.version,
        plugins = rt.chain.plugins.len(),
        database = gw.store.backend_name(),
        open_files,
        "palisade listening on {scheme}://{local}"
    );
    let metrics_server = match rt.settings.server.metrics_listen {
        Some(maddr) => {
            let (ml, mlocal) = palisade::server::bind(maddr)
                .await
                .with_context(|| format!("cannot listen on {maddr} for /metrics"))?;
            tracing::info!("/metrics on http://{mlocal}/metrics");
            Some(tokio::spawn(palisade::server::serve_metrics(
                ml,
                gw.clone(),
            )))
        }
        None => None,
    };
    drop(rt);
    let server = tokio::spawn(palisade::server::serve(listener, gw.clone()));
    let signal = shutdown_signal().await?;
    tracing::info!("{signal}: shutting down gracefully");
    let clean = gw.shutdown().await;
    server.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    tracing::info!(clean, "stopped");
    Ok(())
}

/// Wait for SIGTERM (a deploy, `kill`) or SIGINT (Ctrl-C).
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
