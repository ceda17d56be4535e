//! rustls configurations (ring provider): the listener's (ALPN h2, optional client certificates = mTLS)
//! and the upstreams' (ALPN h2, a CA or the webpki roots, optional client certificate).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read the {what} PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("the {what} PEM holds no certificate"));
    }
    Ok(certs)
}

fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("cannot read the {what} PEM: {e}"))
}

fn roots(pem: &[u8], what: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in certificates(pem, what)? {
        store
            .add(cert)
            .map_err(|e| format!("bad certificate in the {what} PEM: {e}"))?;
    }
    Ok(store)
}

/// The listener's TLS: the certificate chain and key it presents; with `client_ca`, every client must
/// present a certificate signed by it.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca, "client CA")?),
                provider,
            )
            .build()
            .map_err(|e| format!("cannot use the client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(
            certificates(cert_pem, "certificate chain")?,
            private_key(key_pem, "private key")?,
        )
        .map_err(|e| format!("cannot use the certificate and key: {e}"))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// An upstream's TLS: trust `ca` (the webpki roots when None); present `cert`/`key` when both are given.
pub fn client_config(
    ca: Option<&[u8]>,
    cert: Option<&[u8]>,
    key: Option<&[u8]>,
) -> Result<Arc<ClientConfig>, String> {
    let roots = match ca {
        Some(pem) => roots(pem, "upstream CA")?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (cert, key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                certificates(cert, "upstream client certificate")?,
                private_key(key, "upstream client key")?,
            )
            .map_err(|e| format!("cannot use the upstream client certificate and key: {e}"))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(
                "an upstream client certificate needs its key, and a key its certificate"
                    .to_owned(),
            )
        }
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_pem() {
        assert!(server_config(b"nope", b"nope", None)
            .unwrap_err()
            .contains("no certificate"));
        assert!(client_config(Some(b"nope"), None, None)
            .unwrap_err()
            .contains("no certificate"));
        assert!(client_config(None, Some(b"x"), None)
            .unwrap_err()
            .contains("needs its key"));
    }

    #[test]
    fn webpki_roots_by_default() {
        let config = client_config(None, None, None).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    }
}
