//! TLS for the client's HTTP transports (SSE, HTTP streaming): rustls with the *ring*
//! provider, the one the WebSocket stack already builds, so no second crypto library is
//! compiled. Server certificates are checked against the platform's roots.

/// Makes *ring* the process's rustls provider (once; later calls do nothing). Every HTTP
/// client this crate builds needs one; a program that installed its own keeps it.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A builder for an HTTP client that can reach `https` servers.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// An HTTP client with default settings that can reach `https` servers.
pub fn http_client() -> reqwest::Client {
    // Building with default settings fails only when the TLS backend cannot start at
    // all, which no request could survive either.
    http_client_builder()
        .build()
        .expect("the HTTP client's TLS backend failed to start")
}
