//! The `splitter` binary: parse the command line, set up logging, dispatch.
//! Errors become one clear message on stderr and a non-zero exit.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::Parser as _;
use splitter_user::{
    agent::{self, RunOptions},
    cli::{AgentTarget, Cli, Command, StatusArgs},
    config::{Config, DEFAULT_PIN_PATH, DEFAULT_SOCKET},
    control::Request,
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
            if let Some(socket) = &args.socket {
                config.control.socket = socket.clone();
            }
            let opts = RunOptions {
                xdp_mode: args.xdp_mode,
                stats_every: Duration::from_secs(args.stats_every),
                config_path: args.config.clone(),
                socket_override: args.socket,
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
            rt.block_on(agent::run(config, opts))?;
            Ok(())
        }
        Command::Check(args) => {
            let config = Config::load(&args.config)?;
            println!("{}: valid, {} services", args.config.display(), config.services.len());
            for (name, svc) in &config.services {
                // The same planning `run` does, so check catches what run would refuse.
                let plan = splitter_user::plan::plan_service(name, svc, None)?;
                let split: Vec<String> = plan
                    .versions
                    .iter()
                    .zip(&plan.bps)
                    .map(|(v, b)| format!("{v} {:.2}% ({} endpoints)", *b as f64 / 100.0, svc.versions[v].len()))
                    .collect();
                println!(
                    "  {name}  {}/{} {}  {}",
                    svc.listen,
                    format!("{:?}", svc.protocol).to_lowercase(),
                    format!("{:?}", svc.mode).to_lowercase(),
                    split.join(", ")
                );
            }
            Ok(())
        }
        Command::Status(args) => status(args),
        Command::Demo(args) => Ok(splitter_user::demo::run(args.connections as usize)?),
        Command::Weight(args) => {
            let weights = args.weights.into_iter().collect();
            control(&args.target, Request::Weight { service: args.service, weights })
        }
        Command::Flip(args) => control(&args.target, Request::Flip { service: args.service, to: args.to }),
        Command::Rollback(args) => control(&args.target, Request::Rollback { service: args.service }),
    }
}

/// Sends a runtime change to the agent and prints its answer.
fn control(target: &AgentTarget, req: Request) -> Result<()> {
    let socket: PathBuf = match (&target.socket, &target.config) {
        (Some(s), _) => s.clone(),
        (None, Some(file)) => Config::load(file)?.control.socket,
        (None, None) => DEFAULT_SOCKET.into(),
    };
    let response = splitter_user::control::request(&socket, &req)?;
    if !response.ok {
        bail!("{} (nothing was changed)", response.message);
    }
    println!("{}", response.message);
    Ok(())
}

fn status(args: StatusArgs) -> Result<()> {
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let pin_path: PathBuf = match (args.pin_path, &config) {
        (Some(p), _) => p,
        (None, Some(c)) => c.pin_path.clone(),
        (None, None) => DEFAULT_PIN_PATH.into(),
    };
    let report = splitter_user::status::report(pin_path, config.as_ref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
