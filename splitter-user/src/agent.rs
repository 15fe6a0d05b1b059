//! `splitter run`: validate, load, attach, pin, then serve until a signal.

use std::time::Duration;

use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    config::Config,
    dataplane::{ensure_bpffs, AttachMode, Dataplane, DataplaneError},
};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Options of `splitter run` that are not in the config file.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub xdp_mode: AttachMode,
    pub stats_every: Duration,
}

/// Runs the agent until SIGINT or SIGTERM. Everything it attached or pinned is
/// removed on the way out (the `Dataplane` guard).
pub async fn run(config: Config, opts: RunOptions) -> Result<(), AgentError> {
    ensure_bpffs(&config.pin_path)?;
    let mut dp = Dataplane::load()?;
    for ifname in &config.interfaces.clients {
        dp.attach_ingress(ifname, opts.xdp_mode)?;
        info!(interface = %ifname, mode = ?opts.xdp_mode, "attached {}", splitter_common::names::PROG_INGRESS);
    }
    dp.pin_stats(&config.pin_path)?;
    info!(
        pin_path = %config.pin_path.display(),
        services = config.services.len(),
        "splitter running; counters pinned (see `splitter status`)"
    );
    if !config.services.is_empty() {
        warn!("this build parses and counts traffic; it does not split services yet");
    }

    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let mut tick = tokio::time::interval(if opts.stats_every.is_zero() {
        Duration::from_secs(3600 * 24 * 365)
    } else {
        opts.stats_every
    });
    tick.tick().await;
    let mut last = dp.stats()?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: detaching and exiting"); break; }
            _ = sigint.recv() => { info!("SIGINT: detaching and exiting"); break; }
            _ = tick.tick() => {
                let now = dp.stats()?;
                let d = now.since(&last);
                let summary: Vec<String> = d.iter().filter(|(_, v)| *v > 0).map(|(n, v)| format!("{n}={v}")).collect();
                info!("last {}s: {}", opts.stats_every.as_secs(), if summary.is_empty() { "no packets".into() } else { summary.join(" ") });
                last = now;
            }
        }
    }
    drop(dp);
    // Succeeds only when empty: never removes another agent's pins.
    let _ = std::fs::remove_dir(&config.pin_path);
    Ok(())
}
