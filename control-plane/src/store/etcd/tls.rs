//! TLS to etcd: which files, read and checked at connect time, and the
//! endpoint URLs that go with them.
//!
//! The files are parsed here, before any connection, because the client
//! only finds out later and worse: tonic skips a CA file with no
//! certificate in it (every handshake then fails as "unknown issuer"), and
//! a key it cannot load surfaces as a transport error that the store would
//! retry until its deadline.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use etcd_client::{Certificate, Identity, TlsOptions};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::store::StoreError;

/// TLS settings for etcd: the CA that signed the members' server
/// certificates and, where etcd runs with `--client-cert-auth`, this
/// client's certificate and key (both or neither).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM file with the CA certificate(s) that etcd's server certificates chain to.
    pub ca_file: PathBuf,
    /// PEM file with this client's certificate (chain).
    pub client_cert_file: Option<PathBuf>,
    /// PEM file with the client certificate's private key.
    pub client_key_file: Option<PathBuf>,
}

/// Reads and checks the files `tls` names, then checks that the client
/// accepts them together for `url` (a key that does not match its
/// certificate is only found there).
pub(super) fn client_config(tls: &EtcdTls, url: &str) -> Result<TlsOptions, StoreError> {
    let identity = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert_file), Some(key_file)) => Some((cert_file, key_file)),
        (None, None) => None,
        (Some(file), None) | (None, Some(file)) => {
            return Err(StoreError::Internal(format!(
                "etcd TLS: {} given without its pair: client certificate and key go together",
                file.display()
            )));
        }
    };
    let ca = read_pem(&tls.ca_file, "CA file")?;
    certificates(&ca, &tls.ca_file, "CA file")?;
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    let mut files = format!("CA file {}", tls.ca_file.display());
    if let Some((cert_file, key_file)) = identity {
        let cert = read_pem(cert_file, "client certificate")?;
        certificates(&cert, cert_file, "client certificate")?;
        let key = read_pem(key_file, "client key")?;
        PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
            let file = key_file.display();
            StoreError::Internal(format!("etcd TLS: no usable private key in {file}: {e}"))
        })?;
        options = options.identity(Identity::from_pem(cert, key));
        let (cert_file, key_file) = (cert_file.display(), key_file.display());
        files = format!("client certificate {cert_file} with key {key_file}");
    }
    tonic::transport::Endpoint::from_shared(url.to_string())
        .and_then(|endpoint| endpoint.tls_config(options.clone()))
        .map_err(|e| StoreError::Internal(format!("etcd TLS: {files}: {}", error_chain(&e))))?;
    Ok(options)
}

/// Connects to each of `urls` directly, outside the balanced channel, and
/// says why each that fails does (a refused certificate, no listener):
/// what the client's balancer swallows while it waits for a ready member.
pub(super) async fn probe(
    urls: &[String],
    tls: Option<TlsOptions>,
    timeout: Duration,
) -> Vec<String> {
    let mut causes = Vec::new();
    for url in urls {
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .and_then(|endpoint| match &tls {
                Some(tls) => endpoint.tls_config(tls.clone()),
                None => Ok(endpoint),
            })
            .map(|endpoint| endpoint.connect_timeout(timeout));
        let result = match endpoint {
            Ok(endpoint) => match tokio::time::timeout(timeout, endpoint.connect()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(error_chain(&error)),
                Err(_) => Err(format!("no connection within {timeout:?}")),
            },
            Err(error) => Err(error_chain(&error)),
        };
        if let Err(cause) = result {
            causes.push(format!("connecting to {url} directly: {cause}"));
        }
    }
    causes
}

/// `host:port` endpoints as URLs: `https://` with TLS, `http://` without.
/// An endpoint that already names a scheme must agree with the setting.
pub(super) fn endpoint_urls(endpoints: &[String], tls: bool) -> Result<Vec<String>, StoreError> {
    let (scheme, other) = match tls {
        true => ("https://", "http://"),
        false => ("http://", "https://"),
    };
    endpoints
        .iter()
        .map(|endpoint| {
            if endpoint.starts_with(other) {
                let reason = match tls {
                    true => "an http:// endpoint cannot be reached with TLS settings",
                    false => "an https:// endpoint needs TLS settings (a CA file)",
                };
                return Err(StoreError::Internal(format!(
                    "etcd endpoint {endpoint}: {reason}"
                )));
            }
            Ok(match endpoint.starts_with(scheme) {
                true => endpoint.clone(),
                false => format!("{scheme}{endpoint}"),
            })
        })
        .collect()
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| {
        StoreError::Internal(format!(
            "etcd TLS: cannot read {what} {}: {e}",
            path.display()
        ))
    })
}

/// Fails unless `pem` holds at least one well-formed certificate.
fn certificates(pem: &[u8], path: &Path, what: &str) -> Result<(), StoreError> {
    let invalid = |reason: String| {
        let file = path.display();
        StoreError::Internal(format!("etcd TLS: {what} {file}: {reason}"))
    };
    let mut found = 0;
    for certificate in CertificateDer::pem_slice_iter(pem) {
        certificate.map_err(|e| invalid(e.to_string()))?;
        found += 1;
    }
    match found {
        0 => Err(invalid("no PEM certificate in it".into())),
        _ => Ok(()),
    }
}

/// An error and its sources on one line (tonic's own text is only
/// "transport error"), skipping a source its parent already quotes.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        let cause = error.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
        source = error.source();
    }
    text
}
