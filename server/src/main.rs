use clap::Parser;
use dedup_server::config::Config;
use dedup_server::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// sled and the apply path allocate many small, short-lived buffers; glibc malloc spent a third
/// of the leader's CPU on them under batch load, mimalloc far less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args_os().nth(1).is_some_and(|first| first == "restore") {
        // An offline tool on a stopped node's folder: no node configuration, no logging setup.
        let args = dedup_server::restore::RestoreArgs::parse_from(std::env::args_os().skip(1));
        return dedup_server::restore::run(args).await;
    }
    let config = Config::load_from(std::env::args_os()).unwrap_or_else(|error| error.exit());
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    dedup_cluster::bug_zoo::select_from_env().map_err(anyhow::Error::msg)?;
    dedup_server::run(config, shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM. A member is never removed on SIGTERM: it only stops.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutdown requested");
}
