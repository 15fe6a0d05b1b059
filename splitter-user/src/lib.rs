//! The splitter agent and CLI as a library: the binary (`main.rs`) is a thin
//! edge over these modules, and the tests package drives them directly.

pub mod agent;
pub mod agent_process;
pub mod aging;
pub mod backends;
pub mod capture;
pub mod change;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod demo;
pub mod demo_http;
pub mod l7;
pub mod local_addrs;
pub mod metrics;
pub mod netns;
pub mod observe;
pub mod plan;
pub mod rollout;
pub mod runtime;
pub mod status;
pub mod store;
