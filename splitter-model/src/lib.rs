//! splitter's domain, pure and host-tested: what an operator wants (config),
//! what the kernel gets (plan), what changes at run time (runtime, change),
//! how a release is judged (rollout, observe, latency, analysis, webhook), what several nodes
//! share (cluster), which VIPs a node announces (announce), which endpoints are healthy and what that serves
//! (health), and which endpoints and flows the kernel keeps (backends,
//! aging). Decisions are functions of their inputs: the agent gathers the
//! inputs and carries out the results.

pub mod aging;
pub mod analysis;
pub mod announce;
pub mod backends;
pub mod change;
pub mod cluster;
pub mod config;
pub mod health;
pub mod latency;
pub mod observe;
pub mod plan;
pub mod report;
pub mod rollout;
pub mod runtime;
pub mod webhook;
