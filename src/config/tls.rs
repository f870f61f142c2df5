//! The TLS files of a connection: a CA to trust and, for mutual TLS, a
//! client certificate and key, read from the paths the settings give.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// A file cannot be read.
    #[error("reading {key} ({}) for TLS", path.display())]
    Read {
        /// The setting that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM item of the kind it must hold.
    #[error("{key} ({}) holds no PEM {what}", path.display())]
    NoPem {
        /// The setting that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
    },
}

/// The PEM contents of a connection's TLS files.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates to trust (PEM).
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and private key (PEM), for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    /// Names what is there; never prints a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// The paths of one connection's TLS files, as configured.
#[derive(Debug, Clone, Copy)]
pub struct TlsPaths<'a> {
    /// The settings section (`amqp`, `redis`), for messages.
    pub section: &'static str,
    /// `<section>.tls_ca_file`.
    pub ca: Option<&'a Path>,
    /// `<section>.tls_cert_file`.
    pub cert: Option<&'a Path>,
    /// `<section>.tls_key_file`.
    pub key: Option<&'a Path>,
}

impl TlsPaths<'_> {
    /// The settings that name the CA, certificate and key files.
    pub fn keys(&self) -> [&'static str; 3] {
        match self.section {
            "amqp" => [
                "amqp.tls_ca_file",
                "amqp.tls_cert_file",
                "amqp.tls_key_file",
            ],
            _ => [
                "redis.tls_ca_file",
                "redis.tls_cert_file",
                "redis.tls_key_file",
            ],
        }
    }

    /// Whether any file is named.
    pub fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Reads the files, and checks that each holds what it must (a CA file
    /// and a certificate file at least one certificate, a key file a private
    /// key), so that a TLS setting that cannot be honoured fails at start,
    /// saying which file.
    pub fn read(&self) -> Result<TlsFiles, TlsFileError> {
        let read = |key: &'static str, path: Option<&Path>| {
            path.map(|p| {
                let pem = std::fs::read(p).map_err(|source| TlsFileError::Read {
                    key,
                    path: p.to_path_buf(),
                    source,
                })?;
                let (what, holds) = if key.ends_with("key_file") {
                    ("private key", PrivateKeyDer::from_pem_slice(&pem).is_ok())
                } else {
                    let first = CertificateDer::pem_slice_iter(&pem).next();
                    ("certificate", matches!(first, Some(Ok(_))))
                };
                if holds {
                    Ok(pem)
                } else {
                    Err(TlsFileError::NoPem {
                        key,
                        path: p.to_path_buf(),
                        what,
                    })
                }
            })
            .transpose()
        };
        let [ca_key, cert_key, key_key] = self.keys();
        let ca = read(ca_key, self.ca)?;
        let identity = match (read(cert_key, self.cert)?, read(key_key, self.key)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            // Validation makes sure both or neither are named.
            _ => None,
        };
        Ok(TlsFiles { ca, identity })
    }
}
