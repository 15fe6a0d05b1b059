//! Real HTTP backends and clients for the L7 tests: the ones the demo uses
//! (`splitter_user::demo_http`).

pub use splitter_user::demo_http::*;
