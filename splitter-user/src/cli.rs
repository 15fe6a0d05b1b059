//! The command line: every verb an operator types, as clap definitions.
//!
//! Parsing only; `main.rs` dispatches. Verbs that talk to a running agent take
//! `--socket` to override `control.socket` from the config file.

use std::{ops::RangeInclusive, path::PathBuf, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::dataplane::AttachMode;

#[derive(Debug, Parser)]
#[command(
    name = "splitter",
    version,
    about = "eBPF/XDP traffic splitter for progressive delivery: canary, blue-green, mirroring",
    long_about = "splitter splits new connections to a service address between versions by \
                  weight in an XDP program, keeps established connections where they are, and \
                  lets operators move weights, flip blue-green and roll back from this CLI."
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `splitter_user=debug`.
    #[arg(long, global = true, env = "SPLITTER_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the privileged agent in the foreground: load (or adopt) the pinned XDP
    /// data path, attach it and serve until SIGINT/SIGTERM, after which the data
    /// path keeps serving the last state (`splitter down` removes it).
    Run(RunArgs),
    /// Validate a config file and exit: 0 when valid, non-zero with the error.
    Check(CheckArgs),
    /// Show services, versions, weights (file, runtime, live in the kernel),
    /// the split observed over the last minute, rollouts, L4 mirroring,
    /// per-endpoint flows and the data-path counters (`--watch` redraws).
    Status(StatusArgs),
    /// Set version weights of a service on the running agent, e.g. `shop blue=95 green=5`.
    Weight(WeightArgs),
    /// Blue-green: send all new connections of SERVICE to one version, in one step.
    Flip(FlipArgs),
    /// Undo the last runtime weight change to SERVICE; repeat to go further back.
    Rollback(RollbackArgs),
    /// Copy a sample of an l4 service's new flows, whole and both ways, out of
    /// an interface (`--interface IF --percent P`), or stop (`--off`).
    Mirror(MirrorArgs),
    /// Move SERVICE to a version in steps, judging the canary at each step
    /// against the baseline and rolling back on its own when a gate is
    /// breached; or pause, resume, abort, promote or show a rollout.
    Rollout(RolloutArgs),
    /// Show how an l7 service's mirror answers compare with the primary's:
    /// counts and the latest differences.
    Diffs(DiffsArgs),
    /// Compare SERVICE's versions over a recent window: traffic, error rates
    /// (with a two-proportion z-test), latency, mirror differences, and each
    /// analysis metric per version.
    Report(ReportArgs),
    /// Take this node out of (or back into) the routers' ECMP: withdraw
    /// every VIP it announces (`announce:`), or announce them again.
    Node(NodeArgs),
    /// Remove the data path: detach XDP and TC from every interface and unpin
    /// the programs and maps (through the running agent, which then exits, or
    /// directly from the pins when no agent runs). Persisted runtime weights
    /// stay in state_dir.
    Down(AgentTarget),
    /// Build a throwaway namespace topology (client, lb, blue, green), run the
    /// agent on an embedded config and show the split real connections get.
    ///
    /// Only builds with the cargo feature `demo` have it (the shipped agent
    /// carries no test support); `cargo xtask demo` builds one and runs it.
    Demo(DemoArgs),
    /// Print a shell completion script to stdout, e.g.
    /// `splitter completions bash > /etc/bash_completion.d/splitter`.
    Completions(CompletionsArgs),
    /// Write the man pages (splitter.1 and one per command, splitter-run.1...)
    /// into DIR: what the package installs.
    #[command(hide = true)]
    Manpages(ManpagesArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManpagesArgs {
    /// The directory to write them into (created if missing).
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// TCP connections the demo client opens.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The YAML desired state.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// Control socket path; overrides `control.socket` from the file.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// How XDP attaches to the interfaces.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,
    /// Threads serving the l7 proxy (default: one per CPU). Fewer leave
    /// cores to other work on a shared host; 1 runs the whole agent on one
    /// thread, the least CPU per request.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Log a counters summary this often (seconds, up to 86400; 0 disables).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub stats_every: u64,
    /// If an agent already runs on this state dir, take its l7 listeners
    /// over (no connection is refused) and let it drain and exit. An agent
    /// that is already stopping (SIGTERM) hands them over without it.
    #[arg(long)]
    pub takeover: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The YAML file to validate.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The nodes of the shared store: each one's applied revision, whether it
    /// is current, the leader (needs --etcd or a --config with `store:`).
    #[arg(long)]
    pub cluster: bool,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Redraw the table every SECS seconds (default 2) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub watch: Option<u64>,
    /// Read `pin_path` (and the control socket) from this config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// bpffs directory where the agent pins its maps; overrides the config's `pin_path`.
    #[arg(long, value_name = "PATH")]
    pub pin_path: Option<PathBuf>,
    /// Control socket path; overrides `control.socket`.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WeightArgs {
    /// Service name, as in the config file.
    pub service: String,
    /// New weights as VERSION=WEIGHT; versions not named keep their weight.
    #[arg(required = true, value_name = "VERSION=W", value_parser = parse_weight)]
    pub weights: Vec<(String, u32)>,
    #[command(flatten)]
    pub target: AgentTarget,
}

/// Which agent a runtime command talks to.
/// Talking to a shared store (etcd) directly instead of to an agent.
#[derive(Debug, Args, Clone, Default)]
pub struct EtcdArgs {
    /// Change (or read) the desired state in etcd directly: comma-separated
    /// client URLs. Every agent of the store applies the change.
    #[arg(long, value_name = "URLS")]
    pub etcd: Option<String>,
    /// Key prefix of the deployment in etcd (`store.etcd.prefix`).
    #[arg(long, value_name = "PREFIX", default_value = splitter_model::config::DEFAULT_ETCD_PREFIX, requires = "etcd")]
    pub etcd_prefix: String,
    /// etcd user; the password comes from SPLITTER_ETCD_PASSWORD.
    #[arg(long, value_name = "USER", requires = "etcd")]
    pub etcd_user: Option<String>,
    /// PEM CA that signed etcd's certificate (https endpoints).
    #[arg(long, value_name = "FILE", requires = "etcd")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate and key for etcd.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentTarget {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Control socket path; overrides `control.socket` from the config file.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Read `control.socket` from this config file (default socket otherwise).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub action: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Withdraw this node's VIPs: the routers move its flows to the other
    /// nodes. Kept across agent restarts until `undrain`.
    Drain {
        /// Then wait until the node's flow table has no flows left (its
        /// clients moved on and their entries aged out), or --timeout passes.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits at most, e.g. 5m.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_drain_timeout)]
        timeout: Duration,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Announce this node's VIPs again.
    Undrain {
        #[command(flatten)]
        target: AgentTarget,
    },
}

#[derive(Debug, Args)]
pub struct FlipArgs {
    /// Service name, as in the config file.
    pub service: String,
    /// The version that takes all new connections.
    #[arg(long, value_name = "VERSION")]
    pub to: String,
    #[command(flatten)]
    pub target: AgentTarget,
}

#[derive(Debug, Args)]
pub struct DiffsArgs {
    /// Service name (mode l7, with mirror and compare).
    pub service: String,
    /// Print JSON (`compared`, `differ`, `samples`...) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: AgentTarget,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Service name, as in the config file.
    pub service: String,
    /// The window: 1s to 1h (what the agent keeps), e.g. 10m.
    #[arg(long, value_name = "DURATION", value_parser = parse_since, default_value = "1h")]
    pub since: Duration,
    /// The version the others are compared with (default: the one with the
    /// most traffic in the window).
    #[arg(long, value_name = "VERSION")]
    pub baseline: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: AgentTarget,
}

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// Service name (mode l4), as in the config file.
    pub service: String,
    /// Interface the copies leave by (not a clients/backends interface).
    #[arg(long, value_name = "IF", required_unless_present = "off", requires = "percent")]
    pub interface: Option<String>,
    /// Share of new flows copied, in percent (0.01 to 100).
    #[arg(long, value_name = "P", required_unless_present = "off", requires = "interface", value_parser = parse_percent)]
    pub percent: Option<f64>,
    /// Stop mirroring new flows (flows already mirrored are copied to their end).
    #[arg(long, conflicts_with_all = ["interface", "percent"])]
    pub off: bool,
    #[command(flatten)]
    pub target: AgentTarget,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["to", "pause", "resume", "abort", "promote", "approve", "status"])))]
pub struct RolloutArgs {
    /// Service name, as in the config file.
    pub service: String,
    /// Start a rollout to this version (the canary).
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// The canary's share at each step, in percent, rising to 100.
    #[arg(long, value_name = "P,P,...", value_delimiter = ',', default_value = "1,5,25,50,100")]
    pub steps: Vec<u32>,
    /// How long each step lasts, 1s to 30d, e.g. 30s, 5m, 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, default_value = "30s")]
    pub interval: Duration,
    /// Roll back when the canary's error rate exceeds the baseline's by more
    /// than this (l7: 5xx and the proxy's 502/504; l4: endpoint resets), e.g. 1%.
    #[arg(long, value_name = "RATE", value_parser = parse_rate, default_value = "1%")]
    pub max_error_rate: f64,
    /// Roll back when the canary's p99 response time exceeds this (l7), 1ms
    /// to 1h, e.g. 250ms.
    #[arg(long, value_name = "DURATION", value_parser = parse_max_p99)]
    pub max_p99: Option<Duration>,
    /// Roll back when more than this share of mirrored requests differ (l7), e.g. 0.5%.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_diff_rate: Option<f64>,
    /// Canary requests (l7) or new flows (l4) a step needs before it is judged.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub min_requests: u64,
    /// How long a step waits for --min-requests before rolling back, 0s to 30d.
    #[arg(long, value_name = "DURATION", value_parser = parse_max_wait, default_value = "10m")]
    pub max_wait: Duration,
    /// Also judge each step on these metrics of the config's
    /// `analysis.metrics` (Prometheus queries), e.g. checkout-conversion.
    /// An inconclusive one holds the step, up to --max-wait.
    #[arg(long, value_name = "METRIC,...", value_delimiter = ',')]
    pub analysis: Vec<String>,
    /// Call these hooks of the config's `analysis.webhooks`: pre-rollout,
    /// confirm-step and confirm-promotion hooks hold the rollout until they
    /// answer 2xx (up to --max-wait); event hooks are told of each step.
    #[arg(long = "webhook", value_name = "HOOK,...", value_delimiter = ',')]
    pub webhooks: Vec<String>,
    /// Return once the rollout has started instead of following it.
    #[arg(long)]
    pub detach: bool,
    /// Hold the rollout at its step.
    #[arg(long)]
    pub pause: bool,
    /// Go on with a paused rollout.
    #[arg(long)]
    pub resume: bool,
    /// Stop the rollout and restore the weights from before it.
    #[arg(long)]
    pub abort: bool,
    /// Skip the remaining steps: the canary gets everything now.
    #[arg(long)]
    pub promote: bool,
    /// Answer a rollout held before its last step by a confirm-promotion
    /// webhook: the promotion goes ahead without the hook's 2xx.
    #[arg(long)]
    pub approve: bool,
    /// Show the rollout (and follow it while it runs, unless --detach).
    #[arg(long)]
    pub status: bool,
    #[command(flatten)]
    pub target: AgentTarget,
}

/// Parses a duration with humantime: `250ms`, `30s`, `5m`, `1h`, `1h30m`...
/// Overflow is an error, never a wrap.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| explain_duration(s, e))
}

fn explain_duration(s: &str, e: humantime::DurationError) -> String {
    use humantime::DurationError as E;
    match e {
        E::UnknownUnit { unit, .. } if unit.is_empty() => {
            format!("{s:?} has no time unit: the unit must be ms, s, m, h or d (e.g. 30s)")
        }
        E::UnknownUnit { unit, .. } => {
            format!("{s:?}: unknown time unit {unit:?}; the unit must be ms, s, m, h or d (e.g. 30s)")
        }
        E::NumberOverflow => format!("{s:?} is too large (or too fine) to be a duration"),
        _ => format!("{s:?} is not a duration (e.g. 250ms, 30s, 5m, 1h)"),
    }
}

/// Parses a duration (see `parse_duration`) of whole milliseconds within
/// `range` (in milliseconds); the error quotes `s` and gives the range.
pub fn parse_duration_ms(s: &str, range: RangeInclusive<u64>) -> Result<Duration, String> {
    use splitter_model::rollout::human_ms;
    let out_of_range =
        || format!("{s:?} is out of range: use {} to {}", human_ms(*range.start()), human_ms(*range.end()));
    let d = match humantime::parse_duration(s) {
        Err(humantime::DurationError::NumberOverflow) => return Err(out_of_range()),
        parsed => parsed.map_err(|e| explain_duration(s, e))?,
    };
    if !(u128::from(*range.start())..=u128::from(*range.end())).contains(&d.as_millis()) {
        return Err(out_of_range());
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("{s:?} is finer than a millisecond: use whole milliseconds (e.g. 250ms)"));
    }
    Ok(d)
}

/// `--interval`: a rollout step, 1s to 30d.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_duration_ms(s, splitter_model::rollout::INTERVAL_MS)
}

/// `--max-p99`: the p99 gate, 1ms to 1h.
pub fn parse_max_p99(s: &str) -> Result<Duration, String> {
    parse_duration_ms(s, splitter_model::rollout::MAX_P99_MS)
}

/// `report --since`: 1s to what the agent keeps of its samples (1h).
pub fn parse_since(s: &str) -> Result<Duration, String> {
    parse_duration_ms(s, 1_000..=splitter_model::observe::MAX_WINDOW.as_millis() as u64)
}

/// `node drain --timeout`: 1s to a day.
pub fn parse_drain_timeout(s: &str) -> Result<Duration, String> {
    parse_duration_ms(s, 1_000..=86_400_000)
}

/// `--max-wait`: how long a step waits for traffic, 0s to 30d.
pub fn parse_max_wait(s: &str) -> Result<Duration, String> {
    parse_duration_ms(s, splitter_model::rollout::MAX_WAIT_MS)
}

/// Parses a rate: `1%`, `0.5%` or a fraction `0.01`; 0 to 100 %.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (v, scale) = match s.strip_suffix('%') {
        Some(p) => (p, 100.0),
        None => (s, 1.0),
    };
    let r = v.parse::<f64>().map_err(|_| format!("{s:?} is not a rate (e.g. 1% or 0.01)"))? / scale;
    if !(0.0..=1.0).contains(&r) {
        return Err(format!("{s} is out of range: use 0% to 100%"));
    }
    Ok(r)
}

/// Parses a share in percent: 0.01 to 100, fractions allowed.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = s.trim_end_matches('%').parse().map_err(|_| format!("{s:?} is not a number (e.g. 5 or 0.5)"))?;
    if !(0.01..=100.0).contains(&p) {
        return Err(format!("{s} is out of range: use 0.01 to 100 (percent of new flows)"));
    }
    Ok(p)
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Service name, as in the config file.
    pub service: String,
    #[command(flatten)]
    pub target: AgentTarget,
}

/// Parses `VERSION=WEIGHT`.
pub fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (name, w) = s.split_once('=').ok_or_else(|| format!("{s:?} is not VERSION=WEIGHT (e.g. green=5)"))?;
    if name.is_empty() {
        return Err(format!("{s:?} has no version name before '='"));
    }
    let w: u32 = w
        .parse()
        .map_err(|_| format!("weight {w:?} of version {name:?} is not a whole number from 0 to {}", u32::MAX))?;
    Ok((name.to_owned(), w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn weight_arguments_parse_or_explain() {
        assert_eq!(parse_weight("green=5"), Ok(("green".into(), 5)));
        assert!(parse_weight("green").unwrap_err().contains("VERSION=WEIGHT"));
        assert!(parse_weight("=5").unwrap_err().contains("no version name"));
        assert!(parse_weight("green=-1").unwrap_err().contains("whole number"));
        assert!(parse_weight("green=5%").unwrap_err().contains("whole number"));
    }

    #[test]
    fn every_verb_is_there() {
        for verb in ["run", "check", "status", "weight", "flip", "rollback", "down", "diffs", "mirror", "rollout"] {
            assert!(Cli::command().find_subcommand(verb).is_some(), "missing verb {verb}");
        }
        let cli = Cli::try_parse_from(["splitter", "weight", "shop", "blue=95", "green=5"]).unwrap();
        match cli.command {
            Command::Weight(w) => assert_eq!(w.weights, [("blue".into(), 95), ("green".into(), 5)]),
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["splitter", "flip", "shop"]).is_err(), "--to is required");
    }

    #[test]
    fn rollout_arguments_parse_or_explain() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["splitter", "rollout", "shop"][..], args].concat());
        match parse(&["--to", "green", "--steps", "10,50,100", "--interval", "2s", "--max-p99", "250ms"])
            .unwrap()
            .command
        {
            Command::Rollout(r) => {
                assert_eq!(r.steps, [10, 50, 100]);
                assert_eq!(r.interval, Duration::from_secs(2));
                assert_eq!(r.max_p99, Some(Duration::from_millis(250)));
                assert_eq!(r.max_error_rate, 0.01);
            }
            other => panic!("parsed as {other:?}"),
        }
        for (args, want) in [
            (&[][..], "required"),
            (&["--to", "green", "--abort"][..], "cannot be used with"),
            (&["--to", "green", "--interval", "30"][..], "unit must be"),
            (&["--to", "green", "--interval", "soon"][..], "not a duration"),
            (&["--to", "green", "--max-error-rate", "150%"][..], "out of range"),
            (&["--to", "green", "--steps", "1,x"][..], "invalid digit"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: want {want:?} in {e}");
        }
        assert_eq!(parse_rate("0.5%"), Ok(0.005));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    }

    #[test]
    fn durations_out_of_range_are_refused_not_wrapped() {
        let parse =
            |args: &[&str]| Cli::try_parse_from([&["splitter", "rollout", "shop", "--to", "green"][..], args].concat());
        for (args, want) in [
            (&["--interval", "6000000000000000h"][..], r#""6000000000000000h" is out of range: use 1s to 30days"#),
            (&["--interval", "5000000000000000h"][..], r#""5000000000000000h" is out of range: use 1s to 30days"#),
            (&["--interval", "31d"][..], r#""31d" is out of range"#),
            (&["--interval", "500ms"][..], r#""500ms" is out of range: use 1s to"#),
            (&["--interval", "1x"][..], r#"unknown time unit "x""#),
            (&["--max-wait", "6000000000000000h"][..], "out of range: use 0s to 30days"),
            (&["--max-wait", "31d"][..], "out of range: use 0s to 30days"),
            (&["--max-p99", "2h"][..], r#""2h" is out of range: use 1ms to 1h"#),
            (&["--max-p99", "250us"][..], "out of range: use 1ms to 1h"),
            (&["--max-p99", "1.5ms"][..], "finer than a millisecond"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: want {want:?} in {e}");
        }
        for (args, interval, wait) in [
            (&["--interval", "250s"][..], Duration::from_secs(250), Duration::from_secs(600)),
            (&["--interval", "1h30m", "--max-wait", "0s"][..], Duration::from_secs(5400), Duration::ZERO),
            (
                &["--interval", "30d", "--max-wait", "30d"][..],
                Duration::from_secs(30 * 86400),
                Duration::from_secs(30 * 86400),
            ),
        ] {
            match parse(args).unwrap().command {
                Command::Rollout(r) => assert_eq!((r.interval, r.max_wait), (interval, wait), "{args:?}"),
                other => panic!("parsed as {other:?}"),
            }
        }
        let run = |every: &str| Cli::try_parse_from(["splitter", "run", "--config", "c.yaml", "--stats-every", every]);
        assert!(run("86400").is_ok());
        let e = run("100000").unwrap_err().to_string();
        assert!(e.contains("100000") && e.contains("0..=86400"), "{e}");
    }

    #[test]
    fn status_watch_takes_an_optional_period() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["splitter", "status"][..], args].concat());
        let watch = |args: &[&str]| match parse(args).unwrap().command {
            Command::Status(s) => s.watch,
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(watch(&[]), None);
        assert_eq!(watch(&["--watch"]), Some(2));
        assert_eq!(watch(&["--watch", "5"]), Some(5));
        assert!(parse(&["--watch", "0"]).is_err());
        assert!(parse(&["--watch", "--json"]).is_err(), "a JSON document cannot be redrawn");
    }

    #[test]
    fn mirror_arguments_parse_or_explain() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["splitter", "mirror", "shop"][..], args].concat());
        match parse(&["--interface", "mir0", "--percent", "2.5"]).unwrap().command {
            Command::Mirror(m) => {
                assert_eq!((m.interface.as_deref(), m.percent, m.off), (Some("mir0"), Some(2.5), false))
            }
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["--off"]).unwrap().command {
            Command::Mirror(m) => assert!(m.off && m.interface.is_none()),
            other => panic!("parsed as {other:?}"),
        }
        for (args, want) in [
            (&["--interface", "mir0"][..], "--percent"),
            (&["--percent", "5"][..], "--interface"),
            (&[][..], "--interface"),
            (&["--off", "--interface", "mir0"][..], "cannot be used with"),
            (&["--interface", "mir0", "--percent", "0"][..], "out of range"),
            (&["--interface", "mir0", "--percent", "150"][..], "out of range"),
            (&["--interface", "mir0", "--percent", "lots"][..], "not a number"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: want {want:?} in {e}");
        }
    }
}
