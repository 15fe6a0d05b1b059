//! TLS termination on l7 listeners (rustls on ring): certificate pairs read from their files, chosen by SNI, swapped live when the files change.
//!
//! A service with `tls:` has a [`Terminator`]: the pairs loaded as a
//! [`CertSet`] behind an `ArcSwap` (the resolver rustls asks at each
//! handshake loads it once, so a handshake sees the whole old set or the
//! whole new one; open connections never ask again) and the `ServerConfig`
//! (protocol versions, ALPN h2 then http/1.1). [`accept`] turns an accepted
//! socket into the plaintext stream the framing guard and hyper serve.
//!
//! [`CertWatch`] watches the directories of every configured file; after a
//! burst of changes settles it reloads the pairs whose files changed: all
//! good, the set is swapped; otherwise the running set stays and the file
//! is named in a warning. Both outcomes are counted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    io::Read as _,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, info, warn};

use splitter_model::config::l7::{CertPair, Tls, TlsVersion};

/// Largest certificate or key file read: a chain is a few KiB.
pub const MAX_PEM_BYTES: u64 = 1 << 20;
/// How long the certificate files must be quiet before they are reloaded:
/// a rotation writes the certificate and the key one after the other.
pub const SETTLE: Duration = Duration::from_millis(250);

/// What is wrong with a certificate pair; every message names the file.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is {what}, not a regular file: name the PEM file itself")]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("{path} is over {MAX_PEM_BYTES} bytes; a certificate chain or key is a few KiB")]
    TooLarge { path: PathBuf },
    #[error("{path} is not valid PEM ({why})")]
    BadPem { path: PathBuf, why: String },
    #[error(
        "no CERTIFICATE in {path}: give the PEM chain, the server's certificate first (-----BEGIN CERTIFICATE-----)"
    )]
    NoCertificate { path: PathBuf },
    #[error("no private key in {path}: give a PEM key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")]
    NoKey { path: PathBuf },
    #[error("unsupported private key in {path} ({why}): use RSA, ECDSA P-256/P-384 or Ed25519")]
    UnsupportedKey { path: PathBuf, why: rustls::Error },
    #[error("the first certificate in {path} cannot be read ({why})")]
    BadCertificate { path: PathBuf, why: String },
    #[error("{key} does not match {cert}: the key is not the certificate's (was one of them replaced alone?)")]
    Mismatch { cert: PathBuf, key: PathBuf },
    /// One pair of `certificates[]`.
    #[error("certificates[{index}]: {source}")]
    Pair { index: usize, source: Box<TlsError> },
    #[error("cannot set up TLS: {0}")]
    Setup(rustls::Error),
}

/// The crypto provider of every TLS config here: ring, named explicitly
/// (`ServerConfig::builder()` would panic were aws-lc-rs also enabled).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The contents of `path`, a regular file (symlinks followed) of at most
/// [`MAX_PEM_BYTES`]: a FIFO would block, `/dev/zero` never end.
pub(super) fn read_capped(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read { path: path.to_owned(), source };
    let meta = std::fs::metadata(path).map_err(read)?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a directory" } else { "a device, FIFO or socket" };
        return Err(TlsError::NotAFile { path: path.to_owned(), what });
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path).map_err(read)?.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes).map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge { path: path.to_owned() });
    }
    Ok(bytes)
}

/// One pair loaded: the chain and signing key, and the DNS names the
/// end-entity certificate covers (`*.example.com` for a wildcard).
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
}

/// Reads and checks one pair: a PEM chain, a PEM key the provider can sign
/// with, and the key being the certificate's.
pub fn load_pair(pair: &CertPair) -> Result<Loaded, TlsError> {
    let pem = read_capped(&pair.cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem { path: pair.cert.clone(), why: e.to_string() })?;
    let Some(leaf) = chain.first() else { return Err(TlsError::NoCertificate { path: pair.cert.clone() }) };
    let names = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| TlsError::BadCertificate { path: pair.cert.clone(), why: format!("{e:?}") })?
        .valid_dns_names()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    let pem = read_capped(&pair.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: pair.key.clone() },
        e => TlsError::BadPem { path: pair.key.clone(), why: e.to_string() },
    })?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|why| TlsError::UnsupportedKey { path: pair.key.clone(), why })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        // A signer that cannot tell its public key is taken on trust, as
        // rustls's own `CertifiedKey::from_der` does (ring's all can).
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::Mismatch { cert: pair.cert.clone(), key: pair.key.clone() })
        }
        Err(e) => return Err(TlsError::BadCertificate { path: pair.cert.clone(), why: e.to_string() }),
    }
    Ok(Loaded { key: Arc::new(certified), names })
}

/// Values chosen by a TLS server name: an exact name, else a wildcard
/// covering it (its first label dropped), else the default. Names are kept
/// lower case without a trailing dot; an earlier entry keeps a name.
#[derive(Clone, Debug)]
pub struct ByName<T> {
    exact: HashMap<String, T>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, T>,
    default: T,
}

impl<T: Clone> ByName<T> {
    /// From `(names, value)` entries, the first being the default (`None`
    /// when there is none).
    pub fn new(entries: impl IntoIterator<Item = (Vec<String>, T)>) -> Option<ByName<T>> {
        let mut entries = entries.into_iter().peekable();
        let default = entries.peek()?.1.clone();
        let mut by = ByName { exact: HashMap::new(), wildcard: HashMap::new(), default };
        for (names, value) in entries {
            for name in names {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) => by.wildcard.entry(parent.to_owned()).or_insert_with(|| value.clone()),
                    None => by.exact.entry(name).or_insert_with(|| value.clone()),
                };
            }
        }
        Some(by)
    }

    /// The value for server name `sni` (none sent: the default).
    pub fn choose(&self, sni: Option<&str>) -> &T {
        let Some(sni) = sni else { return &self.default };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(v) = self.exact.get(&sni) {
            return v;
        }
        // A wildcard covers exactly one label: a.example.com, not example.com
        // nor a.b.example.com.
        let parent = sni.split_once('.').map(|(_, p)| p).filter(|p| !p.is_empty());
        parent.and_then(|p| self.wildcard.get(p)).unwrap_or(&self.default)
    }
}

/// The certificates of one service, chosen by SNI.
pub struct CertSet {
    by_name: ByName<Arc<CertifiedKey>>,
    /// Each pair's names, in `certificates[]` order (for the log and status).
    pub names: Vec<Vec<String>>,
}

impl CertSet {
    /// Loads every pair of `tls`; an error names the pair and the file.
    pub fn load(tls: &Tls) -> Result<CertSet, TlsError> {
        let mut loaded = Vec::new();
        for (index, pair) in tls.certificates.iter().enumerate() {
            loaded.push(load_pair(pair).map_err(|e| TlsError::Pair { index, source: Box::new(e) })?);
        }
        let names: Vec<Vec<String>> = loaded.iter().map(|l| l.names.clone()).collect();
        let by_name = ByName::new(loaded.into_iter().map(|l| (l.names, l.key))).ok_or(TlsError::Pair {
            index: 0,
            source: Box::new(TlsError::Setup(rustls::Error::NoCertificatesPresented)),
        })?;
        Ok(CertSet { by_name, names })
    }

    /// The pair a handshake with server name `sni` gets.
    pub fn choose(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        self.by_name.choose(sni)
    }
}

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSet").field("names", &self.names).finish()
    }
}

/// The resolver rustls asks at each handshake: the live set, swapped whole.
#[derive(Debug)]
struct Resolver(ArcSwap<CertSet>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().choose(hello.server_name()).clone())
    }
}

/// The certificates of every TLS service of `config`, loaded as `run`
/// would (what `splitter check` reports).
pub fn load_all(config: &splitter_model::config::Config) -> Result<BTreeMap<String, CertSet>, super::L7Error> {
    let tls = config.services.iter().filter_map(|(name, svc)| svc.tls.as_ref().map(|t| (name, t)));
    tls.map(|(name, t)| {
        CertSet::load(t)
            .map(|set| (name.clone(), set))
            .map_err(|source| super::L7Error::Tls { service: name.clone(), source })
    })
    .collect()
}

/// Identity of a file's contents as far as a change goes: device, inode,
/// size and modification time (of the target, symlinks followed).
type Fingerprint = Option<(u64, u64, u64, i64, i64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// A service's TLS termination: its configuration, live certificates and
/// acceptor.
pub struct Terminator {
    /// As configured.
    pub tls: Tls,
    resolver: Arc<Resolver>,
    config: Arc<ServerConfig>,
    /// The files' fingerprints when they were last loaded or tried.
    tried: Mutex<Vec<Fingerprint>>,
}

impl Terminator {
    /// Loads every pair of `tls` and builds its server config; nothing
    /// serves it yet.
    pub fn new(tls: &Tls) -> Result<Terminator, TlsError> {
        let tried = files(tls).map(|p| fingerprint(p)).collect();
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(CertSet::load(tls)?)));
        let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // The server's order wins: h2 when the client offers it.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Terminator { tls: tls.clone(), resolver, config: Arc::new(config), tried: Mutex::new(tried) })
    }

    /// An acceptor for this config (the HTTP control API's listener; the
    /// proxy's listeners take the config per connection).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// The live certificate set.
    pub fn certs(&self) -> Arc<CertSet> {
        self.resolver.0.load_full()
    }

    /// Loads the pairs again if a file changed since they were last loaded
    /// or tried: `None` when none did, else whether the new set now serves
    /// (on an error the running set stays).
    pub fn reload_if_changed(&self) -> Option<Result<Arc<CertSet>, TlsError>> {
        let now: Vec<Fingerprint> = files(&self.tls).map(|p| fingerprint(p)).collect();
        {
            let mut tried = self.tried.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if *tried == now {
                return None;
            }
            *tried = now;
        }
        Some(CertSet::load(&self.tls).map(|set| {
            let set = Arc::new(set);
            self.resolver.0.store(set.clone());
            set
        }))
    }
}

fn files(tls: &Tls) -> impl Iterator<Item = &PathBuf> {
    tls.certificates.iter().flat_map(|p| [&p.cert, &p.key])
}

/// A service's TLS side as its listener and the certificate watch see it.
#[derive(Default)]
pub struct ServiceTls {
    /// `None`: the listener serves plain HTTP.
    pub terminator: ArcSwapOption<Terminator>,
    pub counters: Counters,
}

/// What a service's TLS side counts.
#[derive(Default)]
pub struct Counters {
    /// Handshakes that failed (bad or no ClientHello, no common version or
    /// ALPN protocol, the client hung up).
    pub handshake_failures: AtomicU64,
    /// Handshakes not done within `l7.header_read_timeout`.
    pub handshake_timeouts: AtomicU64,
    /// Certificate file changes loaded and served...
    pub reloads_ok: AtomicU64,
    /// ... and refused (the running certificates stayed).
    pub reloads_refused: AtomicU64,
}

/// How a client connection is served: the scheme the proxy reports to
/// endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A client connection as the proxy reads it: the socket, or TLS over it.
pub enum ClientIo {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl ClientIo {
    pub fn scheme(&self) -> Scheme {
        match self {
            ClientIo::Plain(_) => Scheme::Http,
            ClientIo::Tls(_) => Scheme::Https,
        }
    }
}

/// The connection `stream` from `client` ready for HTTP, after a TLS
/// handshake bounded by `limit`: `choose` picks the terminator (the
/// service's certificates and settings) by the ClientHello's server name.
/// Returns the stream and that name; a failed or late handshake (or no
/// terminator) is counted in `counters` and gives `None`.
pub async fn accept(
    counters: &Counters,
    stream: tokio::net::TcpStream,
    limit: Duration,
    client: std::net::SocketAddr,
    choose: impl FnOnce(Option<&str>) -> Option<Arc<Terminator>>,
) -> Option<(ClientIo, Option<String>)> {
    let handshake = async {
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        let sni = start.client_hello().server_name().map(str::to_owned);
        let Some(terminator) = choose(sni.as_deref()) else {
            return Err(std::io::Error::other("no certificate for this name"));
        };
        let stream = start.into_stream(terminator.config.clone()).await?;
        Ok((stream, sni))
    };
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok((stream, sni))) => Some((ClientIo::Tls(Box::new(stream)), sni)),
        Ok(Err(e)) => {
            counters.handshake_failures.fetch_add(1, Relaxed);
            debug!(%client, "tls handshake failed: {e}");
            None
        }
        Err(_) => {
            counters.handshake_timeouts.fetch_add(1, Relaxed);
            debug!(%client, "tls handshake not done in {limit:?}");
            None
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(s) => s.is_write_vectored(),
            ClientIo::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Watches the certificate files of every TLS service and reloads a
/// service's pairs when one of its files changed (see the module docs).
#[derive(Default)]
pub struct CertWatch {
    watcher: Option<notify::RecommendedWatcher>,
    /// Directories watched now.
    dirs: BTreeSet<PathBuf>,
    /// The TLS services, for the reload task.
    services: Arc<Mutex<BTreeMap<String, Arc<ServiceTls>>>>,
    /// The configured file paths, for the watcher's filter.
    paths: Arc<Mutex<BTreeSet<PathBuf>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl CertWatch {
    /// Watches the files of `services` (each service's TLS side, its
    /// terminator set) and nothing else. Must run inside the tokio runtime.
    pub fn update(&mut self, services: BTreeMap<String, Arc<ServiceTls>>) {
        let mut paths = BTreeSet::new();
        for s in services.values() {
            if let Some(t) = s.terminator.load_full() {
                paths.extend(files(&t.tls).cloned());
            }
        }
        let dirs: BTreeSet<PathBuf> = paths.iter().filter_map(|p| p.parent().map(Path::to_owned)).collect();
        *self.paths.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = paths;
        *self.services.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = services;
        if dirs == self.dirs {
            return;
        }
        if self.watcher.is_none() && !dirs.is_empty() {
            self.start();
        }
        let Some(watcher) = self.watcher.as_mut() else { return };
        use notify::Watcher as _;
        for gone in self.dirs.difference(&dirs) {
            let _ = watcher.unwatch(gone);
        }
        for dir in dirs.difference(&self.dirs) {
            if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), "tls: not watching certificate files here ({e}); a change to them takes a restart");
            }
        }
        self.dirs = dirs;
    }

    /// The watcher (its events filtered to the configured files) and the
    /// task that reloads after they settle.
    fn start(&mut self) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let paths = self.paths.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            // Writes, creations, renames and removals; reading the files (as
            // a reload does) is no change.
            let changes = matches!(
                event.kind,
                notify::EventKind::Modify(_) | notify::EventKind::Create(_) | notify::EventKind::Remove(_)
            );
            let paths = paths.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Kubernetes' atomic writer swaps a `..data` symlink the files point through.
            let ours = |p: &PathBuf| paths.contains(p) || p.file_name().is_some_and(|n| n == "..data");
            if changes && event.paths.iter().any(ours) {
                let _ = tx.send(());
            }
        });
        match watcher {
            Ok(w) => {
                self.watcher = Some(w);
                self.task = Some(tokio::spawn(reload_on_change(rx, self.services.clone())));
            }
            Err(e) => warn!("tls: not watching certificate files ({e}); a change to them takes a restart"),
        }
    }
}

impl Drop for CertWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// After each burst of file events has been quiet for [`SETTLE`], reloads
/// the services whose files changed (off the runtime's workers).
async fn reload_on_change(
    mut events: tokio::sync::mpsc::UnboundedReceiver<()>,
    services: Arc<Mutex<BTreeMap<String, Arc<ServiceTls>>>>,
) {
    while events.recv().await.is_some() {
        loop {
            match tokio::time::timeout(SETTLE, events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let services = services.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (name, s) in services {
                let Some(t) = s.terminator.load_full() else { continue };
                match t.reload_if_changed() {
                    None => {}
                    Some(Ok(set)) => {
                        s.counters.reloads_ok.fetch_add(1, Relaxed);
                        info!(service = %name, names = ?set.names, "tls: certificate files changed: new handshakes get the new certificates");
                    }
                    Some(Err(e)) => {
                        s.counters.reloads_refused.fetch_add(1, Relaxed);
                        warn!(service = %name, "tls: certificate files changed, but still serving the previous certificates: services.{name}.tls.{e}");
                    }
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_name_picks_exact_then_wildcard_then_the_first_pair() {
        let by = ByName::new([
            (names(&["api.example.com", "*.api.example.com"]), "api"),
            (names(&["WWW.Example.com.", "*.example.com"]), "www"),
            (names(&["api.example.com", "*.example.org"]), "late"),
            (names(&[]), "nameless"),
        ])
        .unwrap();
        for (sni, want) in [
            (None, "api"),
            (Some("api.example.com"), "api"),
            (Some("API.example.COM."), "api"),
            (Some("v2.api.example.com"), "api"),
            (Some("www.example.com"), "www"),
            (Some("shop.example.com"), "www"),
            (Some("a.b.example.com"), "api"),
            (Some("x.example.org"), "late"),
            // A wildcard covers one label: not the bare parent, not two levels.
            (Some("example.org"), "api"),
            (Some("a.b.example.org"), "api"),
            (Some("unknown.test"), "api"),
            (Some("localhost"), "api"),
            (Some(""), "api"),
        ] {
            assert_eq!(*by.choose(sni), want, "{sni:?}");
        }
        assert!(ByName::<&str>::new([]).is_none(), "no pair, no default");
    }

    fn pair(dir: &Path, cert: &str, key: &str) -> CertPair {
        CertPair { cert: dir.join(cert), key: dir.join(key) }
    }

    /// The message of loading `pair` (which must fail).
    fn error(pair: &CertPair) -> String {
        match load_pair(pair) {
            Ok(_) => panic!("{pair:?} loaded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_bad_file_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |name: &str, text: &[u8]| std::fs::write(d.join(name), text).unwrap();
        write("key.pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        write("empty.pem", b"");
        write("text.pem", b"hello, not PEM\n");
        write("cut.pem", b"-----BEGIN CERTIFICATE-----\nMIIB\n");
        write("garbage-cert.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        write("huge.pem", &vec![b'a'; MAX_PEM_BYTES as usize + 1]);
        std::fs::create_dir(d.join("dir.pem")).unwrap();
        let path = |n: &str| d.join(n).display().to_string();
        for (pair, says) in [
            (pair(d, "missing.pem", "key.pem"), format!("cannot read {}: No such file", path("missing.pem"))),
            (pair(d, "dir.pem", "key.pem"), format!("{} is a directory, not a regular file", path("dir.pem"))),
            (pair(d, "huge.pem", "key.pem"), format!("{} is over 1048576 bytes", path("huge.pem"))),
            (pair(d, "empty.pem", "key.pem"), format!("no CERTIFICATE in {}", path("empty.pem"))),
            (pair(d, "text.pem", "key.pem"), format!("no CERTIFICATE in {}", path("text.pem"))),
            // A key where the certificate should be: no certificate in it.
            (pair(d, "key.pem", "key.pem"), format!("no CERTIFICATE in {}", path("key.pem"))),
            (pair(d, "cut.pem", "key.pem"), format!("{} is not valid PEM", path("cut.pem"))),
            (pair(d, "garbage-cert.pem", "key.pem"), format!("the first certificate in {}", path("garbage-cert.pem"))),
        ] {
            let msg = error(&pair);
            assert!(msg.contains(&says), "{pair:?}: {msg:?} does not say {says:?}");
        }
        // The pair's index comes first in a set's error.
        let tls = Tls { certificates: vec![pair(d, "missing.pem", "key.pem")], min_version: TlsVersion::default() };
        let msg = CertSet::load(&tls).unwrap_err().to_string();
        assert!(msg.starts_with("certificates[0]: cannot read "), "{msg}");
    }
}
