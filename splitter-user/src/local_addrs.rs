//! The l7 listen addresses made local. The proxy binds with `IP_FREEBIND`, so
//! a listen address that no interface of the namespace has takes the bind and
//! never sees a connection. With `local_addresses.manage` (the default) the
//! agent adds each such address to an interface (`lo` by default), tagged
//! with its own address protocol (`IFA_PROTO` = [`ADDRESS_PROTOCOL`]) so it
//! only ever removes what it added, and keeps exactly the l7 addresses that
//! are not local otherwise as services come and go; `down` removes them.
//! Without it, `check`, `run` and `status` name every l7 address that is not
//! local, with the command that makes it so.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressProtocol},
        link::LinkAttribute,
    },
    Handle,
};
use thiserror::Error;
use tracing::{info, warn};

use splitter_model::config::{Config, LocalAddresses, Mode};

#[derive(Debug, Error)]
pub enum LocalAddrError {
    #[error("{what}: {error} (the agent needs CAP_NET_ADMIN in its network namespace)")]
    Netlink { what: String, error: rtnetlink::Error },
    #[error("local_addresses: opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error(
        "local_addresses.interface {0:?} does not exist in the agent's network namespace: name an existing interface (lo, the default, always is), or set local_addresses.manage: false"
    )]
    NoInterface(String),
}

/// The address protocol (`IFA_PROTO`) that marks the addresses the agent
/// added: `ip -d addr` shows it as `proto 83` (`'S'`).
pub const ADDRESS_PROTOCOL: u8 = b'S';

/// The addresses the l7 services of `config` listen on. An unspecified one
/// (`0.0.0.0`, `::`) is local everywhere and is left out.
pub fn wanted(config: &Config) -> BTreeSet<IpAddr> {
    config
        .services
        .values()
        .filter(|s| s.mode == Mode::L7)
        .map(|s| s.listen.ip())
        .filter(|ip| !ip.is_unspecified())
        .collect()
}

/// Whether `ip` is an address of this network namespace: a bind without
/// `IP_FREEBIND` fails with `EADDRNOTAVAIL` exactly when it is not (or while
/// an IPv6 address is still tentative, when it cannot receive either).
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_unspecified()
        || !matches!(std::net::TcpListener::bind((ip, 0)), Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable)
}

/// The l7 services of `config` whose listen address is not local here.
pub fn not_local(config: &Config) -> BTreeMap<String, IpAddr> {
    config
        .services
        .iter()
        .filter(|(_, s)| s.mode == Mode::L7 && !is_local(s.listen.ip()))
        .map(|(n, s)| (n.clone(), s.listen.ip()))
        .collect()
}

/// The command that makes `ip` local by hand.
pub fn fix_command(ip: IpAddr) -> String {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    format!("ip addr add {ip}/{len} dev lo")
}

/// What to change on the agent's interface.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub add: BTreeSet<IpAddr>,
    pub remove: BTreeSet<IpAddr>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// The agent's interface holds the `wanted` addresses that no other
/// interface has (`elsewhere`), and nothing else; `ours` is what it holds now.
pub fn changes(wanted: &BTreeSet<IpAddr>, elsewhere: &BTreeSet<IpAddr>, ours: &BTreeSet<IpAddr>) -> Changes {
    let target: BTreeSet<IpAddr> = wanted.difference(elsewhere).copied().collect();
    Changes { add: target.difference(ours).copied().collect(), remove: ours.difference(&target).copied().collect() }
}

/// Makes the agent's addresses exactly the `wanted` ones that are not local
/// otherwise: adds the missing ones to `interface` (IPv6 without duplicate
/// address detection, so they are usable at once) and removes the rest of
/// its own. Returns what it changed.
pub fn reconcile(interface: &str, wanted: &BTreeSet<IpAddr>) -> Result<Changes, LocalAddrError> {
    netlink(|handle| async move {
        let all = addresses(&handle).await?;
        let elsewhere: BTreeSet<IpAddr> =
            all.iter().filter(|a| a.proto != Some(ADDRESS_PROTOCOL)).map(|a| a.ip).collect();
        set_tagged(&handle, interface, ADDRESS_PROTOCOL, wanted, &elsewhere, all).await
    })
}

/// Makes the addresses tagged `tag` exactly the `wanted` ones not in
/// `elsewhere` ([`changes`]), adding the missing ones to `interface` as /32
/// or /128 and removing the others (wherever they are); `all` is every
/// address of the namespace now.
pub(crate) async fn set_tagged(
    handle: &Handle,
    interface: &str,
    tag: u8,
    wanted: &BTreeSet<IpAddr>,
    elsewhere: &BTreeSet<IpAddr>,
    all: Vec<Address>,
) -> Result<Changes, LocalAddrError> {
    let mine: Vec<Address> = all.into_iter().filter(|a| a.proto == Some(tag)).collect();
    let ours: BTreeSet<IpAddr> = mine.iter().map(|a| a.ip).collect();
    let changes = changes(wanted, elsewhere, &ours);
    for a in mine.into_iter().filter(|a| changes.remove.contains(&a.ip)) {
        let ip = a.ip;
        handle.address().del(a.message).execute().await.map_err(nl(format!("removing {ip}")))?;
    }
    if changes.add.is_empty() {
        return Ok(changes);
    }
    let index = link_index(handle, interface).await?;
    for ip in &changes.add {
        let mut add = handle.address().add(index, *ip, if ip.is_ipv4() { 32 } else { 128 });
        let m = add.message_mut();
        m.attributes.push(AddressAttribute::Protocol(AddressProtocol::Other(tag)));
        if ip.is_ipv6() {
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        add.execute().await.map_err(nl(format!("adding {ip} to {interface}")))?;
    }
    Ok(changes)
}

/// The agent's side: keeps the interface in step with the served config,
/// talking to the kernel only when the set of l7 addresses changes.
#[derive(Debug)]
pub struct Keeper {
    settings: LocalAddresses,
    /// The l7 addresses last made local (or warned about).
    held: Option<BTreeSet<IpAddr>>,
    /// What was held before the last update (for [`Keeper::revert`]).
    before: Option<BTreeSet<IpAddr>>,
}

impl Keeper {
    pub fn new(settings: LocalAddresses) -> Keeper {
        Keeper { settings, held: None, before: None }
    }

    /// Forgets what it made local, so the next update reconciles (what is
    /// local elsewhere changed: the announce interface).
    pub fn forget(&mut self) {
        self.held = None;
    }

    /// Undoes the last update (a later step of the same change failed).
    pub fn revert(&mut self) -> Result<(), LocalAddrError> {
        let Some(before) = self.before.take() else { return Ok(()) };
        if self.settings.manage {
            reconcile(&self.settings.interface, &before)?;
        }
        self.held = Some(before);
        Ok(())
    }

    /// Makes the l7 addresses of `config` local (with `manage`), or warns
    /// about each that is not (without). On failure nothing is recorded, so
    /// the next change tries again.
    pub fn update(&mut self, config: &Config) -> Result<(), LocalAddrError> {
        self.update_excluding(config, &BTreeSet::new())
    }

    /// [`Keeper::update`] without the `excluded` addresses: they are about
    /// to be local elsewhere (announced), and an address is never on two
    /// interfaces at once (routing daemons lose a connected route that is).
    pub fn update_excluding(&mut self, config: &Config, excluded: &BTreeSet<IpAddr>) -> Result<(), LocalAddrError> {
        let wanted: BTreeSet<IpAddr> = wanted(config).difference(excluded).copied().collect();
        if self.held.as_ref() == Some(&wanted) {
            self.before = None;
            return Ok(());
        }
        let interface = &self.settings.interface;
        if self.settings.manage {
            let c = reconcile(interface, &wanted)?;
            for ip in &c.add {
                info!(address = %ip, interface, "made an l7 listen address local");
            }
            for ip in &c.remove {
                info!(address = %ip, "took off an l7 listen address the agent had made local (no service needs it, or it is local elsewhere now)");
            }
        } else {
            for (service, ip) in not_local(config) {
                warn!(
                    service,
                    address = %ip,
                    "l7 listen address is not local in this network namespace: connections to it never arrive; add it (`{}`) or set local_addresses.manage: true",
                    fix_command(ip)
                );
            }
        }
        self.before = self.held.replace(wanted);
        Ok(())
    }
}

/// What `down` does to local addresses: removes the ones the agent added.
/// Returns how many there were.
pub fn down(settings: &LocalAddresses) -> Result<usize, LocalAddrError> {
    if !settings.manage {
        return Ok(0);
    }
    Ok(reconcile(&settings.interface, &BTreeSet::new())?.remove.len())
}

/// Runs `f` with a netlink handle of this network namespace on a thread of
/// its own (callers are sync, some of them inside the agent's runtime).
pub(crate) fn netlink<T, F, Fut>(f: F) -> Result<T, LocalAddrError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, LocalAddrError>>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt =
                tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(LocalAddrError::Socket)?;
            rt.block_on(async {
                let (connection, handle, _) = rtnetlink::new_connection().map_err(LocalAddrError::Socket)?;
                let connection = tokio::spawn(connection);
                let result = f(handle).await;
                connection.abort();
                result
            })
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

pub(crate) fn nl(what: String) -> impl FnOnce(rtnetlink::Error) -> LocalAddrError {
    move |error| LocalAddrError::Netlink { what, error }
}

/// The index of the interface called `name`.
pub(crate) async fn link_index(handle: &Handle, name: &str) -> Result<u32, LocalAddrError> {
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(nl("listing interfaces".into()))? {
        if link.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(n) if n == name)) {
            return Ok(link.header.index);
        }
    }
    Err(LocalAddrError::NoInterface(name.to_owned()))
}

/// One address of the namespace.
pub(crate) struct Address {
    pub ip: IpAddr,
    /// Its address protocol (`IFA_PROTO`): the agent's tags its own.
    pub proto: Option<u8>,
    /// What deletes it.
    pub message: AddressMessage,
}

/// Every address of the namespace.
pub(crate) async fn addresses(handle: &Handle) -> Result<Vec<Address>, LocalAddrError> {
    let mut out = Vec::new();
    let mut all = handle.address().get().execute();
    while let Some(message) = all.try_next().await.map_err(nl("listing addresses".into()))? {
        // IFA_LOCAL is the local address (IFA_ADDRESS is the peer on a
        // point-to-point link); IPv6 has only IFA_ADDRESS.
        let (mut local, mut address, mut proto) = (None, None, None);
        for a in &message.attributes {
            match a {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            out.push(Address { ip, proto, message });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_agent_holds_exactly_the_wanted_addresses_not_local_otherwise() {
        let wanted = set(&["203.0.113.10", "203.0.113.11", "2001:db8::10"]);
        // .11 is on lo already; .99 is left over from a service that is gone.
        let c = changes(&wanted, &set(&["127.0.0.1", "203.0.113.11"]), &set(&["203.0.113.10", "203.0.113.99"]));
        assert_eq!(c.add, set(&["2001:db8::10"]));
        assert_eq!(c.remove, set(&["203.0.113.99"]));
        // An address an operator put elsewhere leaves ours.
        let c = changes(&wanted, &set(&["203.0.113.10", "203.0.113.11", "2001:db8::10"]), &set(&["203.0.113.10"]));
        assert_eq!((c.add, c.remove), (set(&[]), set(&["203.0.113.10"])));
        assert!(changes(&wanted, &set(&[]), &wanted).is_empty());
    }

    #[test]
    fn loopback_and_unspecified_are_local_and_a_documentation_address_is_not() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local("0.0.0.0".parse().unwrap()));
        assert!(is_local("::".parse().unwrap()));
        assert!(!is_local("192.0.2.123".parse().unwrap()), "TEST-NET-1 is on no interface of a test host");
        assert_eq!(fix_command("203.0.113.10".parse().unwrap()), "ip addr add 203.0.113.10/32 dev lo");
        assert_eq!(fix_command("2001:db8::10".parse().unwrap()), "ip addr add 2001:db8::10/128 dev lo");
    }
}
