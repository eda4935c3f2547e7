//! The HTTPS side of the test and bench upstreams: a TLS acceptor for a certificate of `tests/fixtures/tls/`
//! (`tests/common` and `benches/load.rs` both serve one).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Serves the PEM `certificate` chain with its `key`, offering `alpn` (e.g. `[b"h2", b"http/1.1"]`, as Sentry's
/// ingest does).
pub fn acceptor(certificate: &Path, key: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let chain = CertificateDer::pem_slice_iter(&std::fs::read(certificate).expect("test certificate"))
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates");
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(key).expect("test key")).expect("a PEM private key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key match");
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
