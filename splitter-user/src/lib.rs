//! The splitter agent and CLI as a library: the binary (`main.rs`) is a thin
//! edge over these modules, and the tests package drives them directly.

pub mod agent;
pub mod agent_process;
pub mod capture;
pub mod cli;
pub mod config_file;
pub mod control;
pub mod dataplane;
pub mod demo;
pub mod demo_http;
pub mod l7;
pub mod local_addrs;
pub mod metrics;
pub mod netns;
pub mod state;
pub mod status;
pub mod store;
