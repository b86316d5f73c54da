//! TLS for the server's own HTTP clients (the OpenAI-compatible agent's requests): rustls
//! with the *ring* provider, which the WebSocket stack already builds, so no second crypto
//! library is compiled. Certificates are checked against the platform's roots.

/// Makes *ring* the process's rustls provider (once; later calls do nothing).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
