//! TLS settings from PEM files, with rustls (its `ring` provider).
//!
//! A gateway presents a certificate chain and its key; given a client CA, it requires every
//! client to present a certificate signed by that CA. A client checks the gateway's certificate
//! against the CA it is given, else against the system's roots, and presents a certificate of
//! its own when it has one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Environment variable naming the CA a client checks gateways against.
pub const TLS_CA_ENV: &str = "SHMBUS_TLS_CA";
/// Environment variable naming a client's certificate chain.
pub const TLS_CERT_ENV: &str = "SHMBUS_TLS_CERT";
/// Environment variable naming a client's private key.
pub const TLS_KEY_ENV: &str = "SHMBUS_TLS_KEY";

/// Why TLS settings could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {detail}")]
    File {
        /// What the file was to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the combination (a key that does not match its certificate, say).
    #[error("TLS settings: {0}")]
    Config(String),
    /// A certificate without its key, or a key without its certificate.
    #[error("a TLS certificate needs its key and a key its certificate")]
    Unpaired,
}

/// A client's TLS settings, as [`BusBuilder::tls`](crate::BusBuilder::tls) takes them.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct TlsClientFiles {
    /// The CA to check gateways against (default: the system's roots).
    pub ca: Option<PathBuf>,
    /// A certificate chain and its key to present, for gateways that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TlsClientFiles {
    /// Check gateways against the CA certificates in this PEM file.
    pub fn ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// Present this certificate chain (PEM, leaf first) and key to gateways that require one.
    pub fn identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// From `SHMBUS_TLS_CA`, `SHMBUS_TLS_CERT` and `SHMBUS_TLS_KEY`.
    pub fn from_env() -> Result<TlsClientFiles, TlsError> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let identity = match (var(TLS_CERT_ENV), var(TLS_KEY_ENV)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(TlsError::Unpaired),
        };
        Ok(TlsClientFiles {
            ca: var(TLS_CA_ENV),
            identity,
        })
    }
}

/// A gateway's TLS files, as [`BrokerBuilder::tls`](crate::BrokerBuilder::tls) takes them.
#[derive(Clone, Debug)]
pub struct TlsServerFiles {
    /// The certificate chain to present (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// With a CA, every client must present a certificate that CA signed.
    pub client_ca: Option<PathBuf>,
}

impl TlsServerFiles {
    /// The rustls settings these files make.
    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(&self.cert, &self.key, self.client_ca.as_deref())
    }
}

/// A gateway's TLS settings: `cert` (a PEM chain, leaf first) and `key`; with `client_ca`,
/// clients must present a certificate that CA signed.
fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = roots_from(ca)?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A client's TLS settings.
pub(crate) fn client_config(files: &TlsClientFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &files.ca {
        Some(ca) => roots_from(ca)?,
        None => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            Arc::new(roots)
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &files.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |detail: String| TlsError::File {
        what: "certificate file",
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "private key file",
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

fn roots_from(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what: "CA file",
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}
