//! TLS both ways, against real TLS servers started by the test: a
//! `redis-server` with a TLS port, and `stunnel` terminating TLS in front of
//! the broker. Certificates are made at test time: a private CA, a server
//! certificate for 127.0.0.1 it signs, a client certificate for mutual TLS,
//! and an unrelated CA that must be refused.

use crate::helpers::*;
use crate::redis_server::{RedisServer, free_port};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use reservation_worker::admin::Store;
use reservation_worker::config::{SecretUrl, Settings};
use reservation_worker::producer::Producer;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The PEM files of one test's certificates.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn signed(issuer: &Issuer<'_, KeyPair>, sans: Vec<SanType>) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki(name: &str) -> Pki {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("tls")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let write = |file: &str, pem: &str| {
        let path = dir.join(file);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let (ca_pem, issuer) = ca("reservation-worker test CA");
    let localhost = vec![
        SanType::IpAddress([127, 0, 0, 1].into()),
        SanType::DnsName("localhost".try_into().unwrap()),
    ];
    let (server_cert, server_key) = signed(&issuer, localhost);
    let (client_cert, client_key) = signed(
        &issuer,
        vec![SanType::DnsName("worker".try_into().unwrap())],
    );
    let (other_ca, _) = ca("an unrelated CA");
    Pki {
        ca: write("ca.pem", &ca_pem),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
        other_ca: write("other-ca.pem", &other_ca),
        dir,
    }
}

/// `stunnel` accepting TLS on a free port and forwarding to the broker.
struct Stunnel {
    child: Child,
    port: u16,
}

impl Stunnel {
    async fn start(pki: &Pki, upstream: &str) -> Stunnel {
        let port = free_port();
        let config = pki.dir.join(format!("stunnel-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\n[amqps]\naccept = 127.0.0.1:{port}\nconnect = {upstream}\ncert = {}\nkey = {}\n",
                pki.server_cert.display(),
                pki.server_key.display()
            ),
        )
        .unwrap();
        let program = if Path::new("/usr/bin/stunnel4").exists() {
            "stunnel4"
        } else {
            "stunnel"
        };
        let child = Command::new(program)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel is installed (scripts/test installs stunnel4)");
        eventually("stunnel to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        Stunnel { child, port }
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A redis-server listening for TLS on `tls_port` (and plaintext on its
/// own port, for the test's administration).
async fn tls_redis(pki: &Pki, tls_port: u16, client_certs: bool) -> RedisServer {
    let port = tls_port.to_string();
    let (cert, key, ca) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
        pki.ca.display().to_string(),
    );
    let auth = if client_certs { "yes" } else { "no" };
    RedisServer::start(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        auth,
    ])
    .await
}

/// The test's settings, over TLS to both servers.
fn over_tls(s: &mut Settings, pki: &Pki, amqps_port: u16, rediss_port: u16) {
    s.amqp.url = SecretUrl::new(format!("amqps://guest:guest@127.0.0.1:{amqps_port}/%2f"));
    s.amqp.tls_ca_file = Some(pki.ca.clone());
    s.redis.url = SecretUrl::new(format!("rediss://127.0.0.1:{rediss_port}/0"));
    s.redis.tls_ca_file = Some(pki.ca.clone());
}

/// define, reserve, their events and `inspect`, over `amqps://` and
/// `rediss://` with a private CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_path_runs_over_tls_both_ways() {
    let pki = pki("smoke");
    let stunnel = Stunnel::start(&pki, "127.0.0.1:5672").await;
    let rediss = free_port();
    let _redis = tls_redis(&pki, rediss, false).await;
    let mut app = TestApp::with(|s| over_tls(s, &pki, stunnel.port, rediss)).await;
    app.start_worker();
    app.send(&define("d", "secure", 10, Some(2))).await;
    assert!(app.outcome("d").await.event.is_accepted());
    app.send(&reserve("r", "secure", "u", 2)).await;
    assert!(app.outcome("r").await.event.is_accepted());

    let out = Command::new(env!("CARGO_BIN_EXE_reservation-worker"))
        .args(["inspect", "secure"])
        .env_clear()
        .envs(app.settings.to_env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["reserved"], 2, "{state}");
    app.cleanup().await;
}

/// A CA that did not sign the server's certificate is refused, with an
/// error that says so; the tools fail the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_with_a_clear_error() {
    let pki = pki("wrong-ca");
    let stunnel = Stunnel::start(&pki, "127.0.0.1:5672").await;
    let rediss = free_port();
    let _redis = tls_redis(&pki, rediss, false).await;
    let (mut settings, _) = isolated_settings();
    over_tls(&mut settings, &pki, stunnel.port, rediss);
    settings.amqp.tls_ca_file = Some(pki.other_ca.clone());
    settings.redis.tls_ca_file = Some(pki.other_ca.clone());

    let refused = Producer::connect(&settings.amqp)
        .await
        .err()
        .expect("refused");
    let said = reservation_worker::telemetry::chain(&refused);
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    let store = Store::new(&settings.redis).unwrap();
    let refused = store.ping().await.unwrap_err();
    let said = reservation_worker::telemetry::chain(&refused);
    assert!(said.to_lowercase().contains("certificate"), "{said}");

    let out = Command::new(env!("CARGO_BIN_EXE_reservation-worker"))
        .args(["send", "define", "--resource", "r", "--capacity", "1"])
        .env_clear()
        .envs(settings.to_env())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}

/// A TLS URL pointed at a plaintext port fails; it never falls back to
/// plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_url_at_a_plaintext_port_fails_instead_of_connecting() {
    let pki = pki("plaintext");
    let redis = RedisServer::start(&[]).await;
    let (mut settings, _) = isolated_settings();
    settings.amqp.url = SecretUrl::new("amqps://guest:guest@127.0.0.1:5672/%2f");
    settings.amqp.tls_ca_file = Some(pki.ca.clone());
    settings.redis.url = SecretUrl::new(format!("rediss://127.0.0.1:{}/0", redis.port()));
    settings.redis.tls_ca_file = Some(pki.ca.clone());
    assert!(Producer::connect(&settings.amqp).await.is_err());
    let store = Store::new(&settings.redis).unwrap();
    assert!(store.ping().await.is_err());
}

/// Mutual TLS: a Redis that asks for a client certificate takes the
/// worker's, and refuses a client without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_when_configured() {
    let pki = pki("mutual");
    let rediss = free_port();
    let _redis = tls_redis(&pki, rediss, true).await;
    let (mut settings, _) = isolated_settings();
    settings.redis.url = SecretUrl::new(format!("rediss://127.0.0.1:{rediss}/0"));
    settings.redis.tls_ca_file = Some(pki.ca.clone());
    let without = Store::new(&settings.redis).unwrap();
    assert!(
        without.ping().await.is_err(),
        "no client certificate, no entry"
    );
    settings.redis.tls_cert_file = Some(pki.client_cert.clone());
    settings.redis.tls_key_file = Some(pki.client_key.clone());
    let with = Store::new(&settings.redis).unwrap();
    with.ping().await.unwrap();
}
