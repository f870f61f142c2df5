//! TLS, the same way for the broker and Redis: rustls with the `ring`
//! provider (no OpenSSL).

/// Makes `ring` the process's rustls provider, once; both clients build
/// their TLS configurations on it.
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means a provider is installed already: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
