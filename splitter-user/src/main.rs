//! The `splitter` binary: parse the command line, set up logging, dispatch.
//! Errors become one clear message on stderr and a non-zero exit.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::Parser as _;
use splitter_user::{
    agent::{self, RunOptions},
    cli::{Cli, Command, StatusArgs},
    config::{Config, DEFAULT_PIN_PATH},
    dataplane::Counters,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("splitter: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => {
            let mut config = Config::load(&args.config)?;
            if let Some(socket) = args.socket {
                config.control.socket = socket;
            }
            let opts = RunOptions { xdp_mode: args.xdp_mode, stats_every: Duration::from_secs(args.stats_every) };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
            rt.block_on(agent::run(config, opts))?;
            Ok(())
        }
        Command::Check(args) => {
            let config = Config::load(&args.config)?;
            let names: Vec<&str> = config.services.keys().map(String::as_str).collect();
            println!("{}: valid ({} services: {})", args.config.display(), names.len(), names.join(", "));
            Ok(())
        }
        Command::Status(args) => status(args),
        Command::Demo(args) => Ok(splitter_user::demo::run(args.connections as usize)?),
        Command::Weight(_) | Command::Flip(_) | Command::Rollback(_) => bail!(
            "runtime changes go through the agent's control socket, which this build does not have yet; \
             nothing was changed. Edit the config file and restart `splitter run` meanwhile"
        ),
    }
}

fn status(args: StatusArgs) -> Result<()> {
    let pin_path: PathBuf = match (args.pin_path, &args.config) {
        (Some(p), _) => p,
        (None, Some(file)) => Config::load(file)?.pin_path,
        (None, None) => DEFAULT_PIN_PATH.into(),
    };
    let counters = Counters::read_pinned(&pin_path)?;
    if args.json {
        let doc = serde_json::json!({ "pin_path": pin_path, "counters": counters.to_json() });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("data path counters ({}):", pin_path.display());
        for (name, value) in counters.iter() {
            println!("  {name:<12} {value:>14}");
        }
    }
    Ok(())
}
