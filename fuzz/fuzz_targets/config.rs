//! Config validation (`splitter check`, a reload, the control socket and the
//! store all decide with it): any text is accepted or refused with a short
//! error, never a panic; and what it accepts, the agent can run: every
//! service plans into kernel tables, and every l7 service builds its routing
//! table and starts its mirror.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use splitter_model::{
    config::{Config, Mode},
    plan::plan_all,
};
use splitter_user::{
    config_file::ConfigFile as _,
    l7::{
        route::RouteTable,
        upstream::{self, Upstreams},
        Shared,
    },
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
            let tls = svc.upstream.as_ref().and_then(|u| u.tls.as_ref());
            if let Some(server_name) = tls.and_then(|t| t.server_name.as_deref()) {
                upstream::server_name(server_name).unwrap_or_else(|e| {
                    panic!("validation accepted service {name} whose upstream.tls.server_name rustls refuses: {e}")
                });
            }
            let upstreams = match Upstreams::for_service(svc) {
                Ok(u) => Arc::new(u),
                // The CA file lies outside the config (and seldom exists here).
                Err(_) if tls.is_some() => continue,
                Err(e) => panic!("validation accepted service {name} whose upstreams cannot be made: {e}"),
            };
            drop(Shared::new(name, svc, table, upstreams));
        }
    });
});
