//! The node's announced VIPs (`announce:`): the dummy interface the agent
//! owns (created when missing, up), holding exactly the VIPs
//! `splitter_model::announce::plan` gives, as /32 and /128 addresses tagged
//! with the agent's announce protocol (`IFA_PROTO` = [`ANNOUNCE_PROTOCOL`]),
//! where a BGP daemon on the node (BIRD's `direct` protocol, FRR's
//! `redistribute connected`) picks them up. Whether the node is drained is
//! its own state, kept in `state_dir` across restarts. Stopping the agent
//! keeps the addresses (the pinned data path keeps serving); `down`
//! withdraws them first.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    packet_route::link::{InfoKind, LinkAttribute, LinkInfo},
    LinkDummy, LinkIfb, LinkUnspec,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::info;

use crate::local_addrs::{addresses, netlink, nl, set_tagged, LocalAddrError};
use splitter_model::{
    announce::{plan, Withheld},
    config::{Announce, Config},
    health::Down,
};

/// The address protocol that marks announced VIPs (`ip -d addr` shows
/// `proto 65`, `'A'`); the l7 addresses made local are tagged apart.
pub const ANNOUNCE_PROTOCOL: u8 = b'A';

/// The file in `state_dir` whose presence means the node is drained.
const DRAINED_FILE: &str = "drained";

#[derive(Debug, Error)]
pub enum AnnounceError {
    #[error("announce.interface {0:?} exists and is not a dummy (or ifb) interface: name one of its own (the agent creates it)")]
    NotDummy(String),
    #[error(transparent)]
    Netlink(#[from] LocalAddrError),
    #[error("announce: {what} {path}: {source}")]
    State { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// What `status` shows of the announcement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnounceInfo {
    pub interface: String,
    pub drained: bool,
    pub announced: Vec<IpAddr>,
    /// VIPs not announced, and why.
    pub withheld: BTreeMap<IpAddr, Withheld>,
}

/// The agent's side: keeps the interface in step with the served config,
/// health and the drained flag.
#[derive(Debug)]
pub struct Announcer {
    settings: Announce,
    state_dir: PathBuf,
    drained: bool,
    /// The VIPs on the interface now (as last made so).
    held: Option<BTreeSet<IpAddr>>,
    withheld: BTreeMap<IpAddr, Withheld>,
}

impl Announcer {
    /// The announcer of `settings`, drained if `state_dir` says so. Creates
    /// the interface (or checks the one there is a dummy) and brings it up.
    pub fn new(settings: Announce, state_dir: &Path) -> Result<Announcer, AnnounceError> {
        ensure_interface(&settings.interface)?;
        Ok(Announcer {
            drained: state_dir.join(DRAINED_FILE).exists(),
            settings,
            state_dir: state_dir.to_owned(),
            held: None,
            withheld: BTreeMap::new(),
        })
    }

    /// What [`Announcer::update`] would announce now.
    pub fn planned(&self, config: &Config, down: &Down) -> BTreeSet<IpAddr> {
        plan(config, self.drained, down).0
    }

    /// Whether [`Announcer::update`] would change the interface.
    pub fn would_change(&self, config: &Config, down: &Down) -> bool {
        self.held.as_ref() != Some(&self.planned(config, down))
    }

    /// Announces what `config` and `down` (the endpoints health has out)
    /// call for. Returns whether the announced set changed.
    pub fn update(&mut self, config: &Config, down: &Down) -> Result<bool, AnnounceError> {
        let (wanted, withheld) = plan(config, self.drained, down);
        self.withheld = withheld;
        if self.held.as_ref() == Some(&wanted) {
            return Ok(false);
        }
        let interface = self.settings.interface.clone();
        let target = wanted.clone();
        let changes = netlink(|handle| async move {
            let all = addresses(&handle).await?;
            set_tagged(&handle, &interface, ANNOUNCE_PROTOCOL, &target, &BTreeSet::new(), all).await
        })?;
        for ip in &changes.add {
            info!(vip = %ip, interface = self.settings.interface, "announced");
        }
        for ip in &changes.remove {
            let why = self.withheld.get(ip).map_or_else(|| "no service listens on it".to_owned(), describe);
            info!(vip = %ip, why, "withdrawn");
        }
        self.held = Some(wanted);
        Ok(!changes.is_empty())
    }

    /// Drains (or undrains) the node: recorded in `state_dir` first, so a
    /// restarted agent keeps it; the caller then calls [`Announcer::update`].
    pub fn set_drained(&mut self, drained: bool) -> Result<(), AnnounceError> {
        let path = self.state_dir.join(DRAINED_FILE);
        let result = if drained {
            std::fs::create_dir_all(&self.state_dir)
                .and_then(|()| std::fs::write(&path, b"drained by `splitter node drain`\n"))
        } else {
            std::fs::remove_file(&path)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
        };
        result.map_err(|source| AnnounceError::State { what: "recording the drain in", path, source })?;
        self.drained = drained;
        Ok(())
    }

    pub fn drained(&self) -> bool {
        self.drained
    }

    pub fn settings(&self) -> &Announce {
        &self.settings
    }

    pub fn info(&self) -> AnnounceInfo {
        AnnounceInfo {
            interface: self.settings.interface.clone(),
            drained: self.drained,
            announced: self.held.iter().flatten().copied().collect(),
            withheld: self.withheld.clone(),
        }
    }
}

/// Why a VIP is withheld, for people.
pub fn describe(w: &Withheld) -> String {
    match w {
        Withheld::Drained => "the node is drained (`splitter node undrain` announces it again)".into(),
        Withheld::NoHealthyEndpoint(services) => format!("no healthy endpoint in {}", services.join(", ")),
    }
}

/// Creates the announce interface when missing and brings it up: a dummy
/// interface, or where the kernel has no dummy driver (`CONFIG_DUMMY`
/// off, no module) an ifb one, which equally carries no traffic of its own
/// (it only gets what tc redirects to it; nothing here does). Fails when an
/// interface of another kind has the name.
pub fn ensure_interface(interface: &str) -> Result<(), AnnounceError> {
    let name = interface.to_owned();
    let not_ours = netlink(|handle| async move {
        let mut links = handle.link().get().execute();
        let mut found = None;
        while let Some(link) = links.try_next().await.map_err(nl("listing interfaces".into()))? {
            if link.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(n) if *n == name)) {
                let ours = link.attributes.iter().any(|a| {
                    matches!(a, LinkAttribute::LinkInfo(info)
                        if info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Dummy | InfoKind::Ifb))))
                });
                found = Some((link.header.index, ours));
            }
        }
        match found {
            Some((_, false)) => return Ok(true),
            Some((index, true)) => handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(nl(format!("bringing {name} up")))?,
            None => match handle.link().add(LinkDummy::new(&name).up().build()).execute().await {
                Ok(()) => info!(interface = name, "created the announce interface (dummy)"),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EOPNOTSUPP => {
                    handle
                        .link()
                        .add(LinkIfb::new(&name).up().build())
                        .execute()
                        .await
                        .map_err(nl(format!("creating the announce interface {name} (ifb)")))?;
                    info!(interface = name, "created the announce interface (ifb: this kernel has no dummy driver)");
                }
                Err(e) => return Err(nl(format!("creating the announce interface {name} (dummy)"))(e)),
            },
        }
        Ok(false)
    })?;
    if not_ours {
        return Err(AnnounceError::NotDummy(interface.to_owned()));
    }
    Ok(())
}

/// What `down` does first: withdraws every announced VIP and deletes the
/// interface. Returns how many VIPs it withdrew.
pub fn withdraw_all(settings: &Announce) -> Result<usize, AnnounceError> {
    let interface = settings.interface.clone();
    Ok(netlink(|handle| async move {
        let all = addresses(&handle).await?;
        let changes =
            set_tagged(&handle, &interface, ANNOUNCE_PROTOCOL, &BTreeSet::new(), &BTreeSet::new(), all).await?;
        let mut links = handle.link().get().match_name(interface.clone()).execute();
        if let Ok(Some(link)) = links.try_next().await {
            handle.link().del(link.header.index).execute().await.map_err(nl(format!("deleting {interface}")))?;
        }
        Ok(changes.remove.len())
    })?)
}
