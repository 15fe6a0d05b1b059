//! TLS for the l7 tests: a test CA issuing server certificates (rcgen),
//! written as PEM files the agent reads, and a rustls client that trusts
//! only that CA and speaks HTTP/1.1 or h2 as ALPN chooses.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{
    pki_types::{CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};
use splitter_testkit::{http::BACKEND, netns::NetNs};

/// A test CA and the certificates it issues, written under a temporary
/// directory (removed when dropped).
pub struct Pki {
    pub ca: Issuer<'static, KeyPair>,
    pub ca_der: CertificateDer<'static>,
    pub dir: tempfile::TempDir,
}

/// One issued certificate: its PEM, its key's PEM, and its DER (what a
/// client sees in the handshake).
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    /// A new CA, and a temporary directory for the files it issues.
    pub fn new() -> Pki {
        Pki::named("splitter test CA")
    }

    /// A new CA named `name`; its certificate is written to `ca.pem`
    /// ([`Pki::ca_file`]).
    pub fn named(name: &str) -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        let pki = Pki {
            ca: Issuer::new(params, key),
            ca_der: cert.der().clone(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::write(pki.path("ca.pem"), cert.pem()).expect("ca.pem written");
        pki
    }

    /// This CA's certificate file.
    pub fn ca_file(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    /// A server certificate for `names` with serial number `serial`.
    pub fn issue(&self, names: &[&str], serial: u64) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.serial_number = Some(serial.into());
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.ca).expect("issue");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `issued` to NAME.pem and NAME.key (each replaced by a rename,
    /// as rotation tools do); returns the YAML of the pair.
    pub fn write(&self, name: &str, issued: &Issued) -> String {
        for (file, text) in [(format!("{name}.key"), &issued.key_pem), (format!("{name}.pem"), &issued.cert_pem)] {
            let tmp = self.path(&format!(".{file}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.path(&file)).unwrap();
        }
        self.pair(&format!("{name}.pem"), &format!("{name}.key"))
    }

    /// `{ cert: DIR/CERT, key: DIR/KEY }`.
    pub fn pair(&self, cert: &str, key: &str) -> String {
        format!("{{ cert: {}, key: {} }}", self.path(cert).display(), self.path(key).display())
    }

    /// A client config trusting only this CA, offering `alpn`, sending SNI
    /// or not. It never resumes a session: every handshake is a full one
    /// and shows the certificate served now (a resumed session keeps the
    /// one it started with, on any server).
    pub fn client(&self, alpn: &[&[u8]], sni: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut c = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        c.enable_sni = sni;
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    }
}

pub const H2: &[u8] = b"h2";
pub const H1: &[u8] = b"http/1.1";

/// A TLS connection to the proxy, with what its handshake showed.
pub struct Conn {
    /// The server's certificate (DER).
    pub cert: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
    pub sender: Sender,
    pub name: String,
}

pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub backend: String,
    pub headers: http::HeaderMap,
}

/// Connects to `addr` and completes a handshake that verifies the server as
/// `name` (5 s at most), then HTTP/1.1 or h2 as ALPN chose.
pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> Result<Conn, String> {
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let server = ServerName::try_from(name.to_owned()).map_err(|e| format!("{name}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let session = tls.get_ref().1;
        let cert = session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(H2) {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("http1: {e}"))?;
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Ok(Conn { cert, alpn, sender, name: name.to_owned() })
    };
    tokio::time::timeout(Duration::from_secs(5), work).await.map_err(|_| "no handshake in 5 s".to_owned())?
}

impl Conn {
    /// GET `path` with `headers` (10 s at most).
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Answer, String> {
        let uri = match self.sender {
            Sender::H1(_) => path.to_owned(),
            Sender::H2(_) => format!("https://{}{path}", self.name),
        };
        let mut req = Request::get(uri);
        if let Sender::H1(_) = self.sender {
            req = req.header(http::header::HOST, self.name.as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new()).unwrap();
        let work = async {
            let resp = match &mut self.sender {
                Sender::H1(s) => s.send_request(req).await,
                Sender::H2(s) => s.send_request(req).await,
            }
            .map_err(|e| format!("request: {e}"))?;
            let (parts, body) = resp.into_parts();
            body.collect().await.map_err(|e| format!("body: {e}"))?;
            let backend = parts.headers.get(BACKEND).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            Ok(Answer { status: parts.status, backend, headers: parts.headers })
        };
        tokio::time::timeout(Duration::from_secs(10), work).await.map_err(|_| "no answer in 10 s".to_owned())?
    }
}

/// Runs `f` to completion on a runtime in `ns` (its sockets are there).
pub fn block<T: Send>(ns: &NetNs, f: impl std::future::Future<Output = T> + Send) -> T {
    ns.run(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio").block_on(f))
}
