//! TLS: the server's own HTTP clients (the OpenAI-compatible agent's requests) and, with
//! `--tls-cert/--tls-key`, terminating TLS for every transport. rustls with the *ring*
//! provider, which the WebSocket stack already builds, so no second crypto library is
//! compiled.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Makes *ring* the process's rustls provider (once; later calls do nothing).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The server's certificate and key, read from PEM files, reloadable while it runs (on
/// SIGHUP, so that a renewed certificate is used without a restart). Connections already
/// open keep the certificate they started with.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files; fails with a message naming the file at fault.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        let config = server_config(cert, key)?;
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(config),
        })
    }

    /// The settings new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the files again; on failure the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read TLS_CERT {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "TLS_CERT {} is not a PEM certificate chain: {e}",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "TLS_CERT {} holds no PEM certificate",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read a PEM private key from TLS_KEY {}: {e}",
            key.display()
        )
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| {
                format!(
                    "TLS_CERT {} and TLS_KEY {} do not make a usable pair: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
    // HTTP/1.1 only: WebSocket upgrades and SSE need it, and every client speaks it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
