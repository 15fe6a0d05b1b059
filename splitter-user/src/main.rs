//! The `splitter` binary: parse the command line, set up logging, dispatch.
//! Errors become one clear message on stderr and a non-zero exit.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::Parser as _;
use splitter_model::config::{Config, DEFAULT_PIN_PATH, DEFAULT_SOCKET};
use splitter_user::{
    agent::{self, RunOptions},
    cli::{AgentTarget, Cli, Command, DiffsArgs, EtcdArgs, NodeArgs, NodeCommand, ReportArgs, RolloutArgs, StatusArgs},
    config_file::ConfigFile as _,
    control::{ControlError, Request},
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
                takeover: args.takeover,
            };
            // Worker threads serve the l7 proxy; the agent loop runs on this
            // thread. One worker is this thread alone (a current-thread
            // runtime): no work stealing and no wake-ups across threads,
            // which cost a busy proxy more CPU per request than the one
            // core it has.
            let mut rt = match args.workers {
                Some(1) => tokio::runtime::Builder::new_current_thread(),
                Some(n) => {
                    let mut rt = tokio::runtime::Builder::new_multi_thread();
                    rt.worker_threads(usize::from(n));
                    rt
                }
                None => tokio::runtime::Builder::new_multi_thread(),
            };
            let rt = rt.enable_all().build().context("starting tokio")?;
            rt.block_on(agent::run(config, opts))?;
            Ok(())
        }
        Command::Check(args) => {
            let config = Config::load(&args.config)?;
            println!("{}: valid, {} services", args.config.display(), config.services.len());
            for (name, svc) in &config.services {
                // The same planning `run` does, so check catches what run would refuse.
                let plan = splitter_model::plan::plan_service(name, svc, None)?;
                let split: Vec<String> = plan
                    .versions
                    .iter()
                    .zip(&plan.bps)
                    .map(|(v, b)| format!("{v} {:.2}% ({} endpoints)", *b as f64 / 100.0, svc.versions[v].len()))
                    .collect();
                let mirror = svc
                    .l4_mirror()
                    .map_or(String::new(), |m| format!("; {}% of flows mirrored to {}", m.percent, m.interface));
                println!("  {name}  {}/{} {}  {}{mirror}", svc.listen, svc.protocol, svc.mode, split.join(", "));
                if let Some(r) = &svc.rollout {
                    let steps: Vec<String> = r.steps.iter().map(|s| format!("{s}%")).collect();
                    println!(
                        "    rollout declared: to {} in steps {}, {} each (started when this declaration is new to the agent)",
                        r.to,
                        steps.join(" "),
                        humantime::format_duration(r.interval)
                    );
                }
            }
            // Certificates read and matched with their keys, as run reads them.
            for (name, set) in splitter_user::l7::tls::load_all(&config)? {
                let pairs: Vec<String> = set.names.iter().map(|n| format!("[{}]", n.join(", "))).collect();
                println!("  {name}: tls, certificates for {}", pairs.join(" "));
            }
            // CA files of TLS towards the endpoints, read as run reads them.
            for (name, tls) in splitter_user::l7::upstream::load_all(&config)? {
                let upstream = config.services[&name].upstream.clone().unwrap_or_default();
                let tls_conf = upstream.tls.unwrap_or_default();
                let verified_as = tls_conf.server_name.unwrap_or_else(|| "each endpoint's IP address".into());
                println!(
                    "  {name}: upstream {} over tls, {} CA certificate(s) from {}, endpoints verified as {verified_as}",
                    upstream.protocol.as_str(),
                    tls.roots,
                    tls_conf.ca.display()
                );
            }
            // Outbound CAs read as the agent reads them when it calls out.
            if let Some(p) = &config.analysis.prometheus {
                let names: Vec<&str> = config.analysis.metrics.keys().map(String::as_str).collect();
                splitter_user::analysis::prometheus::Client::new(p).map_err(anyhow::Error::msg)?;
                println!("  analysis: {} metric(s) asked of {} ({})", names.len(), p.url, names.join(", "));
            }
            for (name, hook) in &config.analysis.webhooks {
                splitter_user::analysis::http::Outbound::new(&hook.url, hook.ca.as_deref())
                    .map_err(|e| anyhow::anyhow!("analysis.webhooks.{name}.{e}"))?;
                println!("  webhook {name}: {} {}", hook.kind.as_str(), hook.url);
            }
            // The HTTP control API's token and certificates, read as run reads them.
            if let Some(http) = &config.control.http {
                splitter_user::control::http::Token::read(&http.token_file)?;
                if let Some(tls) = &http.tls {
                    splitter_user::l7::tls::Terminator::new(tls).context("control.http.tls")?;
                }
                let scheme = if http.tls.is_some() { "https" } else { "http" };
                println!("  control API at {scheme}://{}/v1, token from {}", http.listen, http.token_file.display());
            }
            // l7 addresses: local here, or what the agent will do about it.
            let local = &config.local_addresses;
            for (name, ip) in splitter_user::local_addrs::not_local(&config) {
                if local.manage {
                    println!("  {name}: {ip} is not local in this network namespace; the agent adds it to {} (local_addresses.manage)", local.interface);
                } else {
                    println!(
                        "  warning: {name}: {ip} is not local in this network namespace: connections to it never arrive; add it (`{}`) or set local_addresses.manage: true",
                        splitter_user::local_addrs::fix_command(ip)
                    );
                }
            }
            Ok(())
        }
        Command::Status(args) => status(args),
        Command::Demo(args) => Ok(splitter_user::demo::run(args.connections as usize)?),
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "splitter", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages(args) => manpages(&args.dir),
        Command::Weight(args) => {
            let weights = args.weights.into_iter().collect();
            control(&args.target, Request::Weight { service: args.service, weights })
        }
        Command::Flip(args) => control(&args.target, Request::Flip { service: args.service, to: args.to }),
        Command::Rollback(args) => control(&args.target, Request::Rollback { service: args.service }),
        Command::Mirror(args) => {
            let mirror = match (args.off, args.interface, args.percent) {
                (false, Some(interface), Some(percent)) => {
                    Some(splitter_model::config::L4Mirror { interface, percent })
                }
                _ => None,
            };
            control(&args.target, Request::Mirror { service: args.service, mirror })
        }
        Command::Down(target) => down(&target),
        Command::Node(args) => node(args),
        Command::Rollout(args) => rollout(args),
        Command::Diffs(args) => diffs(&args),
        Command::Report(args) => report(&args),
    }
}

/// The control socket `target` names (`--socket`, the config's, or the default).
fn socket_of(target: &AgentTarget) -> Result<PathBuf> {
    Ok(match (&target.socket, &target.config) {
        (Some(s), _) => s.clone(),
        (None, Some(file)) => Config::load(file)?.control.socket,
        (None, None) => DEFAULT_SOCKET.into(),
    })
}

/// `splitter rollout`: starts or steers a rollout in the agent, then (unless
/// `--detach`) follows it until it is over. The rollout runs in the agent:
/// interrupting this command leaves it running.
fn rollout(args: RolloutArgs) -> Result<()> {
    use splitter_model::rollout::{Gates, Plan, State};
    use splitter_user::control::RolloutAction as A;
    let action = match () {
        _ if args.pause => A::Pause,
        _ if args.resume => A::Resume,
        _ if args.abort => A::Abort,
        _ if args.promote => A::Promote,
        _ if args.approve => A::Approve,
        _ if args.status => A::Status,
        _ => A::Start {
            plan: Plan {
                to: args.to.clone().unwrap_or_default(),
                steps: args.steps.clone(),
                interval_ms: args.interval.as_millis() as u64,
                gates: Gates {
                    max_error_rate: Some(args.max_error_rate),
                    max_p99_ms: args.max_p99.map(|d| d.as_millis() as u64),
                    max_diff_rate: args.max_diff_rate,
                    min_requests: args.min_requests,
                    max_wait_ms: args.max_wait.as_millis() as u64,
                },
                analysis: args.analysis.clone(),
                webhooks: args.webhooks.clone(),
            },
        },
    };
    let follow = matches!(action, A::Start { .. } | A::Status) && !args.detach;
    let ask = |action| -> Result<splitter_user::control::Response> {
        let req = Request::Rollout { service: args.service.clone(), action };
        match etcd_of(&args.target.etcd)? {
            Some(cfg) => via_etcd(&cfg, &req),
            None => Ok(splitter_user::control::request(&socket_of(&args.target)?, &req)?),
        }
    };
    let r = ask(action)?;
    if !r.ok {
        bail!("{}", r.message);
    }
    println!("{}", r.message);
    if let Some(current) = &r.rollout {
        println!("  {}", current.origin.describe(&args.service));
    }
    let mut last = String::new();
    let mut state = r.rollout;
    loop {
        let Some(current) = state else { return Ok(()) };
        let line = current.describe();
        if line != last {
            println!("  {line}");
            last = line;
        }
        if !follow || current.state.is_over() || matches!(current.state, State::Paused { .. }) {
            return match current.state {
                State::RolledBack { reason } => bail!("{}: rolled back: {reason}", args.service),
                State::Aborted if follow => bail!("{}: the rollout was aborted", args.service),
                _ => Ok(()),
            };
        }
        std::thread::sleep(Duration::from_secs(1));
        state = ask(A::Status)?.rollout;
    }
}

/// `splitter diffs SERVICE`: the mirror comparison report.
fn diffs(args: &DiffsArgs) -> Result<()> {
    let socket = socket_of(&args.target)?;
    let r = splitter_user::control::request(&socket, &Request::Diffs { service: args.service.clone() })?;
    if !r.ok {
        bail!("{}", r.message);
    }
    let report = r.diffs.unwrap_or_default();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}: compared {}, matched {}, differ {}, shadow errors {}, shadow timeouts {}",
        args.service, report.compared, report.matched, report.differ, report.shadow_errors, report.shadow_timeouts
    );
    for s in report.samples.iter().rev() {
        println!("  {}  primary {} / shadow {}  {}", s.request, s.primary_status, s.shadow_status, s.diff);
    }
    Ok(())
}

/// `splitter report SERVICE`: the agent's numbers per version over the
/// window, and each analysis metric asked of Prometheus per version.
fn report(args: &ReportArgs) -> Result<()> {
    use splitter_model::report;
    let socket = socket_of(&args.target)?;
    let ask = |req: &Request| -> Result<splitter_user::control::Response> {
        let r = splitter_user::control::request(&socket, req)?;
        if !r.ok {
            bail!("{}", r.message);
        }
        Ok(r)
    };
    let window_secs = args.since.as_secs();
    let analysis = ask(&Request::Analysis { service: args.service.clone(), window_secs })?
        .analysis
        .context("the agent sent no analysis")?;
    let baseline = match &args.baseline {
        Some(b) => b.clone(),
        None => report::pick_baseline(&analysis).context("the service has no versions")?,
    };
    // The analysis metrics of the config the agent runs (or --config's).
    let config_path = match &args.target.config {
        Some(path) => path.clone(),
        None => ask(&Request::Status)?.agent.context("the agent sent no status")?.config,
    };
    let config = Config::load(&config_path)?;
    let versions: Vec<String> = analysis.versions.keys().cloned().collect();
    let values = if config.analysis.metrics.is_empty() {
        Default::default()
    } else {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(splitter_user::analysis::per_version(
            &config.analysis,
            &args.service,
            &versions,
            &baseline,
            args.since,
        ))
    };
    let r = report::build(&analysis, &baseline, window_secs, &config.analysis.metrics, &values)
        .map_err(anyhow::Error::msg)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.render());
    }
    Ok(())
}

/// The man pages: `splitter.1`, and `splitter-COMMAND.1` for each visible
/// command, rendered from the CLI's own definition (clap_mangen).
fn manpages(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    let write = |name: &str, page: clap::Command| -> Result<()> {
        let mut text = Vec::new();
        clap_mangen::Man::new(page).render(&mut text)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("splitter-{}", sub.get_name());
        write(&name, sub.clone().name(name.clone()))?;
    }
    write("splitter", cmd)
}

/// `splitter down`: through the agent when one listens, else from the pins.
fn down(target: &AgentTarget) -> Result<()> {
    let socket = socket_of(target)?;
    match splitter_user::control::request(&socket, &Request::Down) {
        Ok(r) if r.ok => {
            println!("{}", r.message);
            return Ok(());
        }
        Ok(r) => bail!("{}", r.message),
        Err(ControlError::Connect { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(file) = &target.config else {
        bail!(
            "no agent is listening at {}; pass --config FILE so `down` can find pin_path and remove the data path itself",
            socket.display()
        );
    };
    let config = Config::load(file)?;
    // Held by a running agent: then it must be asked (or stopped) instead.
    let _lock = agent::lock_state_dir(&config.state_dir).with_context(|| {
        format!("an agent holds {} but does not answer at {}", config.state_dir.display(), socket.display())
    })?;
    // The routers move the flows away before the data path goes.
    if let Some(announce) = &config.announce {
        let withdrawn = splitter_user::announce::withdraw_all(announce)?;
        if withdrawn > 0 {
            println!(
                "withdrew {withdrawn} VIPs from {}; waiting {:?} for the routers",
                announce.interface, announce.settle
            );
            std::thread::sleep(announce.settle);
        }
    }
    let removed = splitter_user::dataplane::down(&config.pin_path)?;
    let _ = std::fs::remove_file(&socket);
    if removed.is_empty() {
        println!("nothing pinned at {}: the data path was already down", config.pin_path.display());
    } else {
        println!("removed the data path at {} ({} pins; XDP detached)", config.pin_path.display(), removed.len());
    }
    let addrs = splitter_user::local_addrs::down(&config.local_addresses)?;
    if addrs > 0 {
        println!("removed the {addrs} l7 listen addresses the agent had added");
    }
    Ok(())
}

/// `splitter node drain|undrain`: asks the agent; with `drain --wait`,
/// then follows the node's flow table until it is empty or the time is up.
fn node(args: NodeArgs) -> Result<()> {
    use splitter_user::control::NodeAction;
    let (action, target, wait) = match args.action {
        NodeCommand::Drain { wait, timeout, target } => (NodeAction::Drain, target, wait.then_some(timeout)),
        NodeCommand::Undrain { target } => (NodeAction::Undrain, target, None),
    };
    let socket = socket_of(&target)?;
    let r = splitter_user::control::request(&socket, &Request::Node { action })?;
    if !r.ok {
        bail!("{}", r.message);
    }
    println!("{}", r.message);
    let Some(timeout) = wait else { return Ok(()) };
    let pin_path = r.agent.map(|a| a.pin_path).context("the agent did not say where its data path is pinned")?;
    let started = std::time::Instant::now();
    let mut last = None;
    loop {
        let flows = splitter_user::dataplane::PinnedMaps::open(&pin_path)?.active_flows();
        if flows == 0 {
            println!("drained: no flows left in the flow table after {:.1?}", started.elapsed());
            return Ok(());
        }
        if started.elapsed() >= timeout {
            bail!(
                "{flows} flows still in the flow table after {timeout:?}; the node is drained (withdrawn) all the same"
            );
        }
        if last != Some(flows) {
            println!("waiting: {flows} flows in the flow table");
            last = Some(flows);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The store `--etcd` names, if it does.
fn etcd_of(args: &EtcdArgs) -> Result<Option<splitter_model::config::Etcd>> {
    let Some(endpoints) = &args.etcd else { return Ok(None) };
    let tls = args.etcd_ca.clone().map(|ca| splitter_model::config::EtcdTls {
        ca,
        cert: args.etcd_cert.clone(),
        key: args.etcd_key.clone(),
    });
    Ok(Some(splitter_user::store::cli_etcd(endpoints, &args.etcd_prefix, args.etcd_user.clone(), tls)?))
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?.block_on(f))
}

/// A change made in the store directly: the same pure change an agent makes,
/// committed with a compare-and-swap; every agent of the store applies it.
fn via_etcd(cfg: &splitter_model::config::Etcd, req: &Request) -> Result<splitter_user::control::Response> {
    use splitter_user::{control::Response, store::Store};
    block_on(async {
        let mut store = Store::connect(cfg).await?;
        if let Request::Rollout { service, action: splitter_user::control::RolloutAction::Status } = req {
            let Some((_, d)) = store.load().await? else { bail!("no desired state in etcd yet") };
            return Ok(Response::rollout_status(&d.runtime, service));
        }
        let who = format!("cli on {}", splitter_model::config::Config::default_node_name());
        let (revision, _, outcome) = store
            .change(|_, current| -> Result<_> {
                let o = req.outcome(&current.file(), &current.runtime)?;
                let next = current.next(None, o.next.clone(), &who, &o.message)?;
                Ok((next, o))
            })
            .await?;
        Ok(Response {
            weights: outcome.weights,
            rollout: outcome.rollout,
            ..Response::ok(format!("{} (store revision {revision}; every node applies it)", outcome.message))
        })
    })?
}

/// Sends a runtime change to the agent (or the store) and prints its answer.
fn control(target: &AgentTarget, req: Request) -> Result<()> {
    let response = match etcd_of(&target.etcd)? {
        Some(cfg) => via_etcd(&cfg, &req)?,
        None => splitter_user::control::request(&socket_of(target)?, &req)?,
    };
    if !response.ok {
        bail!("{} (nothing was changed)", response.message);
    }
    println!("{}", response.message);
    Ok(())
}

/// `status --cluster`: the store's desired revision and every node's.
fn cluster_status(cfg: &splitter_model::config::Etcd, json: bool) -> Result<()> {
    use splitter_user::{status::ClusterReport, store::Store};
    let (desired, nodes, leader) = block_on(async {
        let mut store = Store::connect(cfg).await?;
        let desired = store.load().await?;
        let nodes = store.nodes().await?;
        let leader = store.leader().await?;
        anyhow::Ok((desired, nodes, leader))
    })??;
    let report = ClusterReport::new(cfg, desired.as_ref(), &nodes, leader.as_deref());
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

fn status(args: StatusArgs) -> Result<()> {
    let config = args.config.as_deref().map(Config::load).transpose()?;
    if args.cluster || args.etcd.etcd.is_some() {
        let cfg = match (etcd_of(&args.etcd)?, config.as_ref().and_then(|c| c.store.as_ref())) {
            (Some(cfg), _) => cfg,
            (None, Some(store)) => store.etcd.clone(),
            (None, None) => {
                bail!("status --cluster needs the store: --etcd URLS, or --config FILE with `store: {{ etcd }}`")
            }
        };
        return cluster_status(&cfg, args.json);
    }
    let socket: PathBuf = match (&args.socket, &config) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) => c.control.socket.clone(),
        (None, None) => DEFAULT_SOCKET.into(),
    };
    loop {
        // No answer is not an error: the pinned data path serves without an agent.
        let agent = splitter_user::control::request(&socket, &Request::Status).ok().and_then(|r| r.agent);
        // The file when given; else the agent at the socket knows its
        // services and its pins.
        let pin_path: PathBuf = match (&args.pin_path, &config, &agent) {
            (Some(p), _, _) => p.clone(),
            (None, Some(c), _) => c.pin_path.clone(),
            (None, None, Some(a)) => a.pin_path.clone(),
            (None, None, None) => DEFAULT_PIN_PATH.into(),
        };
        let services = match (&config, &agent) {
            (Some(c), _) => c.services.clone(),
            (None, Some(a)) => a.services.clone(),
            (None, None) => Default::default(),
        };
        let report = splitter_user::status::report(pin_path, &services, agent)?;
        let Some(every) = args.watch else {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            return Ok(());
        };
        // Clear the screen, then the report, until interrupted.
        print!("\x1b[2J\x1b[H{}", report.render());
        std::io::Write::flush(&mut std::io::stdout())?;
        std::thread::sleep(Duration::from_secs(every));
    }
}
