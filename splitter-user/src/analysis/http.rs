//! The agent's outbound HTTP calls (Prometheus queries, webhooks): http://
//! or https:// (verified against a configured CA, or the system's roots),
//! each bounded in time and in the size of the answer read.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

/// An answer: its status and (the first bytes of) its body.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// A client for one server's calls (its CA loaded once).
pub struct Outbound {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Outbound {
    /// A client for `url`: over https trusting `ca` (PEM), or the system's
    /// roots without it. The error names the file, or says no root was found.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Outbound, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match ca {
            // Clear text: no roots to read (an https redirect is not followed).
            _ if !url.starts_with("https://") => HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("TLS setup: {e}"))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
            Some(path) => {
                let (roots, _) = crate::l7::upstream::load_roots(path).map_err(|e| e.to_string())?;
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("TLS setup: {e}"))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                HttpsConnectorBuilder::new().with_tls_config(config)
            }
            None => HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)
                .map_err(|e| format!("the system's CA roots: {e} (install ca-certificates, or give ca:)"))?,
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ok(Outbound { http: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// Sends `req` and reads at most `max_body` bytes of the answer, all
    /// within `timeout`. The error says what failed, naming `what`.
    pub async fn send(
        &self,
        what: &str,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Reply, String> {
        let work = async {
            let resp =
                self.http.request(req).await.map_err(|e| format!("{what}: {}", crate::l7::upstream::describe(&e)))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), max_body)
                .collect()
                .await
                .map_err(|e| format!("{what}: HTTP {status}, reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>(Reply { status, body })
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| format!("{what}: no answer in {timeout:?}"))?
    }
}
