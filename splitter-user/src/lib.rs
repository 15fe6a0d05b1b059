//! The splitter agent and CLI as a library: the binary (`main.rs`) is a thin
//! edge over these modules, and the tests package drives them directly.
//!
//! Cargo features, both off in the shipped agent: `demo` builds `splitter
//! demo` (on splitter-testkit; `cargo xtask demo` turns it on), and
//! `test-hooks` the data path's test and benchmark entry points
//! (`BPF_PROG_TEST_RUN`, the floor program; the tests package turns it on).

pub mod agent;
pub mod analysis;
pub mod announce;
pub mod cli;
pub mod config_file;
pub mod control;
pub mod dataplane;
pub mod demo;
pub mod health;
pub mod heap;
pub mod l7;
pub mod link_watch;
pub mod local_addrs;
pub mod metrics;
pub mod state;
pub mod status;
pub mod store;
