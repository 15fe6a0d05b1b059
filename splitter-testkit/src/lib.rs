//! Test and demo support, kept out of the shipped agent: the end-to-end
//! tests and the benchmarks depend on it, and so does `splitter demo` (only
//! in builds with splitter-user's `demo` feature, which `cargo xtask demo`
//! turns on).
//!
//! * [`netns`]: network namespaces and veth pairs as guards, names unique per
//!   process;
//! * [`topology`]: the client → lb → blue/green topology, its addresses, and
//!   the agent configs on it (the demo's among them);
//! * [`config`]: agent configs built from interfaces, settings and services;
//! * [`serve`]: TCP and UDP backends that answer with their version;
//! * [`http`]: real HTTP backends and a hyper client in namespaces;
//! * [`capture`]: AF_PACKET captures and the TCP flows in them;
//! * [`agent_process`]: `splitter run` as a child process in a namespace;
//! * [`wait`]: waiting for a state (bounded, saying what it saw) instead of
//!   sleeping.
//!
//! It never depends on splitter-user (which depends on it): what it needs of
//! the agent it reads off the wire, as an operator's tools would.

pub mod agent_process;
pub mod capture;
pub mod config;
pub mod http;
pub mod netns;
pub mod serve;
pub mod topology;
pub mod wait;
