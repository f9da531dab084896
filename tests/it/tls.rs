//! TLS and mutual TLS on the gRPC port, with certificates made by the test:
//! a client that trusts the server's CA (and, for mTLS, holds a certificate
//! from the client CA) is served; anyone else is refused.

use std::path::{Path, PathBuf};

use portcullis::proto::v1::{self as pb, auth_service_client::AuthServiceClient};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_types::StatusExt as _;

use crate::{
    db_tests,
    support::{Backend, TestApp},
};

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Self { pem, issuer: Issuer::new(params, key) }
    }

    /// A leaf certificate and key (PEM) for `names`.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        (params.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }
}

/// Writes the server's certificate and key, and optionally a client CA.
fn write_server_files(
    dir: &Path,
    server_ca: &Ca,
    client_ca: Option<&Ca>,
) -> (PathBuf, PathBuf, Option<PathBuf>) {
    let (cert, key) = server_ca.issue(&["localhost", "127.0.0.1"]);
    let cert_file = dir.join("server.pem");
    let key_file = dir.join("server.key");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let ca_file = client_ca.map(|ca| {
        let file = dir.join("clients-ca.pem");
        std::fs::write(&file, &ca.pem).unwrap();
        file
    });
    (cert_file, key_file, ca_file)
}

/// Calls `ValidateToken` over a channel built with `tls` (or in plaintext).
/// `Ok` when the server answered at all (any portcullis error carries an
/// `ErrorInfo`); `Err` with what the client saw when it was refused.
async fn call(app: &TestApp, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://127.0.0.1:{}", app.addr.port())).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("tls config: {e}"))?;
    }
    let channel: Channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let answer = AuthServiceClient::new(channel)
        .validate_token(pb::ValidateTokenRequest {
            credential: Some(pb::validate_token_request::Credential::Token("pcs_sess_nothing".into())),
            required_scopes: vec![],
        })
        .await;
    match answer {
        Err(status) if status.get_details_error_info().is_some() => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            Ok(())
        }
        Err(status) => Err(format!("{status:?}")),
        Ok(_) => panic!("a made-up token was accepted"),
    }
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem)).domain_name("localhost")
}

db_tests!(tls_serves_clients_that_trust_it_and_refuses_the_rest);

async fn tls_serves_clients_that_trust_it_and_refuses_the_rest(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("portcullis test server CA");
    let (cert, key, _) = write_server_files(dir.path(), &server_ca, None);
    let app = TestApp::start_with(&backend, |config| {
        config.tls_cert_file = Some(cert);
        config.tls_key_file = Some(key);
    })
    .await;

    call(&app, Some(trusting(&server_ca))).await.expect("a client trusting the CA is served");
    let stranger = Ca::new("some other CA");
    let refused = call(&app, Some(trusting(&stranger))).await.expect_err("an untrusted server certificate");
    assert!(refused.to_lowercase().contains("certificate") || refused.contains("connect"), "{refused}");
    call(&app, None).await.expect_err("plaintext is refused on a TLS port");
    // Refusals did not hurt the server.
    call(&app, Some(trusting(&server_ca))).await.unwrap();
    app.stop().await;
}

db_tests!(mutual_tls_refuses_clients_without_a_trusted_certificate);

async fn mutual_tls_refuses_clients_without_a_trusted_certificate(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("portcullis test server CA");
    let client_ca = Ca::new("portcullis test client CA");
    let (cert, key, clients) = write_server_files(dir.path(), &server_ca, Some(&client_ca));
    let app = TestApp::start_with(&backend, |config| {
        config.tls_cert_file = Some(cert);
        config.tls_key_file = Some(key);
        config.tls_client_ca_file = clients;
    })
    .await;

    let (client_cert, client_key) = client_ca.issue(&["billing.svc"]);
    let with_identity = trusting(&server_ca).identity(Identity::from_pem(&client_cert, &client_key));
    call(&app, Some(with_identity.clone())).await.expect("a client with a certificate from the client CA");

    let refused = call(&app, Some(trusting(&server_ca))).await;
    assert!(refused.is_err(), "a client without a certificate was served");

    let impostor_ca = Ca::new("portcullis test server CA"); // same name, other key
    let (cert, key) = impostor_ca.issue(&["billing.svc"]);
    let impostor = trusting(&server_ca).identity(Identity::from_pem(&cert, &key));
    assert!(call(&app, Some(impostor)).await.is_err(), "a certificate from another CA was accepted");

    // A server certificate is no client certificate of the client CA either.
    let (cert, key) = server_ca.issue(&["localhost"]);
    let wrong_ca = trusting(&server_ca).identity(Identity::from_pem(&cert, &key));
    assert!(call(&app, Some(wrong_ca)).await.is_err(), "a certificate of the server CA was accepted");

    call(&app, Some(with_identity)).await.expect("still serving trusted clients");
    app.stop().await;
}

#[tokio::test]
async fn tls_settings_must_come_in_pairs() {
    use portcullis::config::Config;
    let half = Config { tls_cert_file: Some("cert.pem".into()), ..Config::default() };
    let err = half.check().unwrap_err().to_string();
    assert!(err.contains("tls_cert_file/tls_key_file"), "{err}");
    let ca_only = Config { tls_client_ca_file: Some("ca.pem".into()), ..Config::default() };
    let err = ca_only.check().unwrap_err().to_string();
    assert!(err.contains("tls_client_ca_file"), "{err}");

    // Unreadable files stop start-up, naming the setting.
    let db = crate::support::TestDb::create(&Backend::Sqlite).await;
    let mut config = crate::support::test_config(&db);
    config.tls_cert_file = Some("/nonexistent/cert.pem".into());
    config.tls_key_file = Some("/nonexistent/key.pem".into());
    let app = portcullis::app::App::build(config, std::sync::Arc::new(portcullis::domain::SystemClock))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = app.serve(listener, std::future::pending()).await.unwrap_err();
    assert!(format!("{err:#}").contains("tls_cert_file /nonexistent/cert.pem"), "{err:#}");
}
