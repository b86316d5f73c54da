//! TLS for every transport of the client (WebSocket, SSE, HTTP streaming) and for plain
//! HTTP requests: rustls with the *ring* provider, the one the WebSocket stack already
//! builds, so no second crypto library is compiled.
//!
//! Server certificates are checked against the platform's roots, or, as OpenSSL-based
//! tools do, against the file named by `SSL_CERT_FILE` (or the directory `SSL_CERT_DIR`)
//! when set; plus any CA file the caller names (`--ca-cert`), for a server whose
//! certificate comes from a private CA.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Makes *ring* the process's rustls provider (once; later calls do nothing). Every HTTP
/// client this crate builds needs one; a program that installed its own keeps it.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The TLS settings of a client: the platform's roots (or `SSL_CERT_FILE`'s), plus the
/// certificates of `extra_ca` (a PEM file) when given.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    install_crypto_provider();
    if extra_ca.is_none() {
        // The common case, made once per process: reading the platform's store parses
        // every certificate in it, which costs milliseconds per connection otherwise.
        static DEFAULT: std::sync::OnceLock<Result<Arc<ClientConfig>, String>> =
            std::sync::OnceLock::new();
        return DEFAULT.get_or_init(|| build_config(None)).clone();
    }
    build_config(extra_ca)
}

fn build_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = platform_roots().clone();
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| {
                format!(
                    "cannot read the CA certificate file {}: {e}",
                    path.display()
                )
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The platform's roots (or `SSL_CERT_FILE`'s), read once per process.
fn platform_roots() -> &'static RootCertStore {
    static ROOTS: std::sync::OnceLock<RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        // Certificates the platform store cannot parse are skipped, as browsers do.
        let native = rustls_native_certs::load_native_certs();
        let _ = roots.add_parsable_certificates(native.certs);
        roots
    })
}

/// A builder for an HTTP client that reaches `https` servers with `tls`.
pub fn http_client_builder_with(tls: &Arc<ClientConfig>) -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().tls_backend_preconfigured((**tls).clone())
}

/// A builder for an HTTP client that can reach `https` servers (platform roots).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    match client_config(None) {
        Ok(tls) => http_client_builder_with(&tls),
        Err(_) => {
            install_crypto_provider();
            reqwest::Client::builder()
        }
    }
}

/// An HTTP client with default settings that can reach `https` servers.
pub fn http_client() -> reqwest::Client {
    // Building with default settings fails only when the TLS backend cannot start at
    // all, which no request could survive either.
    http_client_builder()
        .build()
        .expect("the HTTP client's TLS backend failed to start")
}
