//! Which VIPs a node announces (`announce:`): every service's listen
//! address, unless the node is drained or every service on that address has
//! all its endpoints out of service. A pure decision; the agent keeps the
//! result on its dummy interface and a BGP daemon exports it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use crate::{config::Config, health::Down};

/// Why a VIP is not announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Withheld {
    /// `splitter node drain`.
    Drained,
    /// No service on it has a healthy endpoint (the services named).
    NoHealthyEndpoint(Vec<String>),
}

/// The VIPs of `config` this node announces, and those it withholds (and
/// why). `drained`: the operator drained the node. `down`: the endpoints
/// health has out of service, per service.
pub fn plan(config: &Config, drained: bool, down: &Down) -> (BTreeSet<IpAddr>, BTreeMap<IpAddr, Withheld>) {
    // VIP → (services on it, those with no healthy endpoint).
    let mut vips: BTreeMap<IpAddr, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (name, svc) in &config.services {
        let ip = svc.listen.ip();
        let entry = vips.entry(ip).or_default();
        entry.0.push(name.clone());
        let out = down.get(name);
        let endpoints: Vec<_> = svc.versions.values().flatten().collect();
        let dead = !endpoints.is_empty() && out.is_some_and(|out| endpoints.iter().all(|e| out.contains(e)));
        if dead {
            entry.1.push(name.clone());
        }
    }
    let mut announced = BTreeSet::new();
    let mut withheld = BTreeMap::new();
    for (ip, (services, dead)) in vips {
        if drained {
            withheld.insert(ip, Withheld::Drained);
        } else if dead.len() == services.len() {
            withheld.insert(ip, Withheld::NoHealthyEndpoint(dead));
        } else {
            announced.insert(ip);
        }
    }
    (announced, withheld)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::from_yaml(
            "interfaces: { clients: [eth0] }\n\
             announce: { interface: splitter0 }\n\
             services:\n\
             \x20 web: { listen: \"203.0.113.10:80\", protocol: tcp, versions: { a: [\"10.0.0.1:80\"], b: [\"10.0.0.2:80\"] }, weights: { a: 1 } }\n\
             \x20 tls: { listen: \"203.0.113.10:443\", protocol: tcp, versions: { a: [\"10.0.0.3:443\"] }, weights: { a: 1 } }\n\
             \x20 api: { listen: \"[2001:db8::10]:80\", protocol: tcp, versions: { a: [\"[2001:db8:1::4]:80\"] }, weights: { a: 1 } }\n\
             ",
        )
        .unwrap()
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn every_vip_is_announced_until_drained() {
        let c = config();
        let (announced, withheld) = plan(&c, false, &Down::new());
        assert_eq!(announced, ips(&["203.0.113.10", "2001:db8::10"]));
        assert!(withheld.is_empty());
        let (announced, withheld) = plan(&c, true, &Down::new());
        assert!(announced.is_empty());
        assert_eq!(withheld.len(), 2);
        assert!(withheld.values().all(|w| *w == Withheld::Drained));
    }

    #[test]
    fn a_vip_is_withdrawn_only_when_every_service_on_it_has_no_healthy_endpoint() {
        let c = config();
        let ep = |s: &str| s.parse().unwrap();
        // web half down, tls all down: 203.0.113.10 still serves web.
        let mut down: Down =
            [("web".to_owned(), [ep("10.0.0.1:80")].into()), ("tls".to_owned(), [ep("10.0.0.3:443")].into())].into();
        let (announced, _) = plan(&c, false, &down);
        assert!(announced.contains(&"203.0.113.10".parse().unwrap()));
        // web all down too: withdrawn, naming both.
        down.get_mut("web").unwrap().insert(ep("10.0.0.2:80"));
        let (announced, withheld) = plan(&c, false, &down);
        assert_eq!(announced, ips(&["2001:db8::10"]));
        assert_eq!(
            withheld[&"203.0.113.10".parse().unwrap()],
            Withheld::NoHealthyEndpoint(vec!["tls".into(), "web".into()])
        );
    }
}
