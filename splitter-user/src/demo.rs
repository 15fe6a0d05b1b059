//! `splitter demo`: a throwaway namespace topology, the agent on the demo
//! config, real traffic and what it got (the scenario is in `demo/scenario.rs`).
//!
//! The demo is built only with the cargo feature `demo`, which brings in
//! splitter-testkit (namespaces, backends, captures): the shipped agent
//! carries no test support. `cargo xtask demo` builds with the feature and
//! runs it; a build without it keeps the subcommand (so `splitter --help` is
//! the same everywhere) and says how to get the demo.

#[cfg(feature = "demo")]
mod scenario;

#[cfg(feature = "demo")]
pub use scenario::{run, DemoError};

/// Why `splitter demo` did not run.
#[cfg(not(feature = "demo"))]
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "this splitter was built without the demo (cargo feature `demo`; the shipped agent leaves test support out): \
         `cargo xtask demo` builds it with the demo and runs it"
    )]
    NotBuilt,
}

/// Without the `demo` feature: says that this build has no demo.
#[cfg(not(feature = "demo"))]
pub fn run(_connections: usize) -> Result<(), DemoError> {
    Err(DemoError::NotBuilt)
}
