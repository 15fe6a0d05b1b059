//! Config validation (`splitter check`, a reload, the control socket and the
//! store all decide with it): any text is accepted or refused with a short
//! error, never a panic; and what it accepts, the agent can run: every
//! service plans into kernel tables, and every l7 service builds its routing
//! table and starts its mirror.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use splitter_model::{
    config::{Config, Mode},
    plan::plan_all,
};
use splitter_user::{
    config_file::ConfigFile as _,
    l7::{route::RouteTable, Shared},
};

/// Longest error a refusal may print: values are quoted cut short, so an
/// input of any size gives a message of about this size at most.
const MAX_ERROR: usize = 2048;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime"))
}

fuzz_target!(|text: &str| {
    let config = match Config::from_yaml(text) {
        Ok(c) => c,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(msg.len() <= MAX_ERROR, "a {}-byte error for a {}-byte file:\n{msg}", msg.len(), text.len());
            return;
        }
    };
    if let Err(e) = plan_all(&config, |_| None) {
        panic!("validation accepted a config that does not plan: {e}\n{text}");
    }
    runtime().block_on(async {
        for (name, svc) in config.services.iter().filter(|(_, s)| s.mode == Mode::L7) {
            let table = RouteTable::build(svc, None)
                .unwrap_or_else(|e| panic!("validation accepted service {name} whose table does not build: {e}"));
            drop(Shared::new(name, svc, table));
        }
    });
});
