//! The desired state in etcd (`store: { etcd }`): one key holds the whole
//! [`Desired`] document, changed only by compare-and-swap transactions on its
//! revision; each node registers under `nodes/` with a lease and reports the
//! revision it applied; one node holds `leader` (a leased key) and drives the
//! rollouts. The agent's [`session`] keeps a watch open and reconnects with
//! backoff; the CLI uses [`Store`] directly (`--etcd`).
//!
//! Keys under the prefix: `desired` (JSON), `nodes/<name>` (JSON
//! [`NodeRecord`], leased), `leader` (node name, leased).

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, Identity, PutOptions, TlsOptions, Txn, TxnOp,
    WatchOptions,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use splitter_model::{cluster::Desired, config::Etcd};

/// How long a node's registration and leadership outlive its last keepalive.
pub const LEASE_TTL_SECS: i64 = 6;
/// Environment variable with the etcd password (instead of `password_file`).
pub const PASSWORD_ENV: &str = "SPLITTER_ETCD_PASSWORD";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("the store (etcd at {endpoints}) is unreachable: {why}")]
    Unreachable { endpoints: String, why: String },
    #[error("store.etcd: {0}")]
    Setup(String),
    #[error("{key} in etcd is not a splitter desired state ({why}); fix or delete it (`etcdctl del {key}`) and publish again")]
    Corrupt { key: String, why: String },
    #[error(
        "etcd at {endpoints} refused this client: {why} (check store.etcd.username, the password and the certificates)"
    )]
    Denied { endpoints: String, why: String },
    #[error("{0}")]
    Refused(String),
    #[error("the desired state kept changing under this change ({0} tries); try again")]
    Contended(u32),
}

/// One node as it registers itself.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct NodeRecord {
    pub node: String,
    /// The desired-state revision this node serves.
    pub applied_revision: i64,
    /// Why the latest revision could not be applied here, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub pid: u32,
    pub started_unix: u64,
    pub updated_unix: u64,
}

/// What the agent's session reports to its loop.
#[derive(Debug)]
pub enum StoreEvent {
    /// A desired state at this revision (the current one after a (re)connect,
    /// then each change).
    Desired { revision: i64, desired: Box<Desired> },
    /// The store is reachable again, or not (and why).
    Reachable(Result<(), String>),
    /// This node leads (drives rollouts) or no longer does.
    Leader(bool),
}

/// An open etcd client with this deployment's keys.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
    endpoints: String,
}

fn unreachable(cfg: &Etcd, e: impl std::fmt::Display) -> StoreError {
    classify(cfg.endpoints.join(","), e.to_string())
}

/// An etcd error as the operator needs it: credentials refused, or etcd away.
fn classify(endpoints: String, why: String) -> StoreError {
    const DENIED: [&str; 4] =
        ["authentication failed", "user name is empty", "permission denied", "invalid auth token"];
    if DENIED.iter().any(|d| why.contains(d)) {
        let short = why.split("message: ").nth(1).unwrap_or(&why).trim_matches('"').to_owned();
        StoreError::Denied { endpoints, why: short }
    } else {
        StoreError::Unreachable { endpoints, why }
    }
}

fn options(cfg: &Etcd) -> Result<ConnectOptions, StoreError> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(4))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| StoreError::Setup(format!("reading {what} {}: {e}", p.display())))
    };
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(p) => String::from_utf8_lossy(&read("password_file", p)?).trim_end_matches(['\n', '\r']).to_owned(),
            None => std::env::var(PASSWORD_ENV).map_err(|_| {
                StoreError::Setup(format!("username {user:?} needs a password: set password_file or {PASSWORD_ENV}"))
            })?,
        };
        o = o.with_user(user.clone(), password);
    }
    if let Some(t) = &cfg.tls {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read("tls.ca", &t.ca)?));
        if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
            tls = tls.identity(Identity::from_pem(read("tls.cert", cert)?, read("tls.key", key)?));
        }
        o = o.with_tls(tls);
    }
    Ok(o)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Store {
    /// Connects (and authenticates) within a few seconds, or says why not.
    pub async fn connect(cfg: &Etcd) -> Result<Store, StoreError> {
        let options = options(cfg)?;
        let client = tokio::time::timeout(Duration::from_secs(5), Client::connect(&cfg.endpoints, Some(options)))
            .await
            .map_err(|_| unreachable(cfg, "no answer within 5s"))?
            .map_err(|e| unreachable(cfg, e))?;
        let mut store = Store { client, prefix: cfg.prefix.clone(), endpoints: cfg.endpoints.join(",") };
        // Connecting is lazy for plain http: ask something to know.
        store.client.status().await.map_err(|e| store.down(e))?;
        Ok(store)
    }

    fn down(&self, e: impl std::fmt::Display) -> StoreError {
        classify(self.endpoints.clone(), e.to_string())
    }

    pub fn desired_key(&self) -> String {
        format!("{}/desired", self.prefix)
    }

    fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    fn parse(&self, value: &[u8]) -> Result<Desired, StoreError> {
        serde_json::from_slice(value).map_err(|e| StoreError::Corrupt { key: self.desired_key(), why: e.to_string() })
    }

    /// The desired state and its revision, if there is one.
    pub async fn load(&mut self) -> Result<Option<(i64, Desired)>, StoreError> {
        let key = self.desired_key();
        let r = self.client.get(key, None).await.map_err(|e| self.down(e))?;
        match r.kvs().first() {
            Some(kv) => Ok(Some((kv.mod_revision(), self.parse(kv.value())?))),
            None => Ok(None),
        }
    }

    /// Writes `next` if the desired state is still at `expected` (0: absent).
    /// Returns the new revision, or `None` when something else changed it.
    pub async fn commit(&mut self, expected: i64, next: &Desired) -> Result<Option<i64>, StoreError> {
        let key = self.desired_key();
        let value = serde_json::to_vec(next).expect("desired states serialize");
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)]);
        let r = self.client.txn(txn).await.map_err(|e| self.down(e))?;
        Ok(r.succeeded().then(|| r.header().map_or(0, |h| h.revision())))
    }

    /// Applies `change` to the current desired state and commits it,
    /// retrying when another writer got in between. Returns the revision and
    /// what `change` returned with the state it wrote.
    pub async fn change<T, E: std::fmt::Display>(
        &mut self,
        mut change: impl FnMut(i64, &Desired) -> Result<(Desired, T), E>,
    ) -> Result<(i64, Desired, T), StoreError> {
        const TRIES: u32 = 5;
        for _ in 0..TRIES {
            let Some((rev, current)) = self.load().await? else {
                return Err(StoreError::Refused(format!(
                    "no desired state at {} yet: start an agent with this store (it publishes its file) first",
                    self.desired_key()
                )));
            };
            let (next, out) = change(rev, &current).map_err(|e| StoreError::Refused(e.to_string()))?;
            if let Some(new) = self.commit(rev, &next).await? {
                return Ok((new, next, out));
            }
        }
        Err(StoreError::Contended(TRIES))
    }

    /// Every registered node.
    pub async fn nodes(&mut self) -> Result<Vec<NodeRecord>, StoreError> {
        let prefix = self.nodes_prefix();
        let r = self
            .client
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.down(e))?;
        Ok(r.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
    }

    /// The node holding the leader key, if any.
    pub async fn leader(&mut self) -> Result<Option<String>, StoreError> {
        let key = self.leader_key();
        let r = self.client.get(key, None).await.map_err(|e| self.down(e))?;
        Ok(r.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    async fn register(&mut self, record: &NodeRecord, lease: i64) -> Result<(), StoreError> {
        let key = format!("{}{}", self.nodes_prefix(), record.node);
        let value = serde_json::to_vec(&NodeRecord { updated_unix: now_unix(), ..record.clone() }).expect("serializes");
        self.client.put(key, value, Some(PutOptions::new().with_lease(lease))).await.map_err(|e| self.down(e))?;
        Ok(())
    }

    /// Takes the leader key when free; returns whether `node` holds it.
    async fn campaign(&mut self, node: &str, lease: i64) -> Result<bool, StoreError> {
        let key = self.leader_key();
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            node,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let r = self.client.txn(txn).await.map_err(|e| self.down(e))?;
        if r.succeeded() {
            return Ok(true);
        }
        Ok(self.leader().await?.as_deref() == Some(node))
    }
}

/// The agent's link to the store, for as long as the agent runs: connects,
/// publishes `seed` when the store has no desired state yet, reports the
/// current desired state and then every change, keeps this node registered
/// (with the revision it applied, from `applied`) and campaigns for the
/// leader key. Any error (etcd down, the watch cancelled by a compaction)
/// closes the session; a new one starts after a backoff and resyncs from a
/// full read, so no change is missed.
pub async fn session(
    cfg: Etcd,
    seed: Desired,
    events: mpsc::UnboundedSender<StoreEvent>,
    mut applied: watch::Receiver<NodeRecord>,
) {
    let mut backoff = Duration::from_millis(250);
    let mut quiet = false;
    loop {
        let mut connected = false;
        let e = match session_inner(&cfg, &seed, &events, &mut applied, &mut connected).await {
            Ok(()) => return,
            Err(e) => e,
        };
        if events.is_closed() {
            return;
        }
        if connected {
            backoff = Duration::from_millis(250);
            quiet = false;
        }
        // Logged once per outage, not at every retry.
        if !quiet {
            tracing::warn!("store: {e}; serving the last applied state, retrying with backoff");
            quiet = true;
        }
        let _ = events.send(StoreEvent::Leader(false));
        let _ = events.send(StoreEvent::Reachable(Err(e.to_string())));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session_inner(
    cfg: &Etcd,
    seed: &Desired,
    events: &mpsc::UnboundedSender<StoreEvent>,
    applied: &mut watch::Receiver<NodeRecord>,
    connected: &mut bool,
) -> Result<(), StoreError> {
    let mut store = Store::connect(cfg).await?;
    let lease = store.client.lease_grant(LEASE_TTL_SECS, None).await.map_err(|e| store.down(e))?.id();
    let (mut keeper, mut keepalives) = store.client.lease_keep_alive(lease).await.map_err(|e| store.down(e))?;
    let (revision, desired) = match store.load().await? {
        Some(found) => found,
        None => {
            // First node up: its file becomes the desired state (unless
            // another node published in between).
            match store.commit(0, seed).await? {
                Some(rev) => {
                    tracing::info!(revision = rev, "published this node's file as the desired state");
                    (rev, seed.clone())
                }
                None => store.load().await?.ok_or_else(|| store.down("the desired state vanished"))?,
            }
        }
    };
    let key = store.desired_key();
    let mut stream = store
        .client
        .watch(key, Some(WatchOptions::new().with_start_revision(revision + 1)))
        .await
        .map_err(|e| store.down(e))?;
    if events.send(StoreEvent::Reachable(Ok(()))).is_err()
        || events.send(StoreEvent::Desired { revision, desired: Box::new(desired) }).is_err()
    {
        return Ok(());
    }
    *connected = true;
    let node = applied.borrow().node.clone();
    let record = applied.borrow_and_update().clone();
    store.register(&record, lease).await?;
    let mut leader = store.campaign(&node, lease).await?;
    let _ = events.send(StoreEvent::Leader(leader));
    let mut tick = tokio::time::interval(Duration::from_secs((LEASE_TTL_SECS / 3).max(1) as u64));
    tick.tick().await;
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(resp) = msg.map_err(|e| store.down(e))? else {
                    return Err(store.down("the watch stream ended"));
                };
                if resp.canceled() {
                    return Err(store.down(format!("the watch was cancelled ({})", resp.cancel_reason())));
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    if ev.event_type() == EventType::Delete {
                        tracing::warn!("the desired state was deleted from the store; serving the last applied one");
                        continue;
                    }
                    match store.parse(kv.value()) {
                        Ok(d) => {
                            if events.send(StoreEvent::Desired { revision: kv.mod_revision(), desired: Box::new(d) }).is_err() {
                                return Ok(());
                            }
                        }
                        Err(e) => tracing::error!(revision = kv.mod_revision(), "{e}; not applied"),
                    }
                }
            }
            _ = tick.tick() => {
                keeper.keep_alive().await.map_err(|e| store.down(e))?;
                match keepalives.message().await.map_err(|e| store.down(e))? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Err(store.down("this node's lease expired")),
                }
                let now = store.campaign(&node, lease).await?;
                if now != leader {
                    leader = now;
                    tracing::info!(node, leader, "store leadership changed");
                    let _ = events.send(StoreEvent::Leader(leader));
                }
            }
            changed = applied.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let record = applied.borrow_and_update().clone();
                store.register(&record, lease).await?;
            }
        }
    }
}

/// A [`Store`] opened on demand and dropped when etcd is unreachable, for
/// the agent's own writes.
pub struct Writer {
    cfg: Etcd,
    store: Option<Store>,
}

impl Writer {
    pub fn new(cfg: Etcd) -> Writer {
        Writer { cfg, store: None }
    }

    pub fn endpoints(&self) -> String {
        self.cfg.endpoints.join(",")
    }

    /// Runs `f` on a connected store (connecting first when needed).
    pub async fn with<T>(&mut self, f: impl AsyncFnOnce(&mut Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.store.is_none() {
            self.store = Some(Store::connect(&self.cfg).await?);
        }
        let result = f(self.store.as_mut().expect("connected above")).await;
        if matches!(result, Err(StoreError::Unreachable { .. })) {
            self.store = None;
        }
        result
    }
}

/// The etcd settings of the CLI's `--etcd` flags.
pub fn cli_etcd(
    endpoints: &str,
    prefix: &str,
    user: Option<String>,
    tls: Option<splitter_model::config::EtcdTls>,
) -> Result<Etcd, StoreError> {
    let cfg = Etcd {
        endpoints: endpoints.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
        prefix: prefix.to_owned(),
        tls,
        username: user,
        password_file: None,
    };
    let flags =
        [("store.etcd.tls.ca", "--etcd-ca"), ("store.etcd.prefix", "--etcd-prefix"), ("store.etcd.", "--etcd ")];
    cfg.check().map_err(|e| StoreError::Setup(flags.iter().fold(e, |e, (from, to)| e.replace(from, to))))?;
    Ok(cfg)
}
