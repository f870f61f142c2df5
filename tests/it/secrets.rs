//! A password planted in both URLs never shows in anything the programs
//! print, at every log level the clients offer (`RUST_LOG=trace`, the AMQP
//! and Redis clients' own included): not for a refused connection, not for
//! a wrong password, not in a successful run, nor in `/metrics` or
//! `status --json`. The password is looked for as text and as the byte list
//! and hex a client would print.

use crate::helpers::*;
use crate::process::WorkerProcess;
use crate::redis_server::{RedisServer, free_port};
use reservation_worker::config::{SecretUrl, Settings};
use std::process::{Command, Output};

/// Every way the password could be printed.
fn forms(password: &str) -> Vec<String> {
    let bytes = password.as_bytes();
    vec![
        password.to_string(),
        bytes
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        hex::encode(bytes),
    ]
}

fn assert_hidden(what: &str, text: &str, password: &str) {
    for form in forms(password) {
        assert!(
            !text.contains(&form),
            "{what} shows the password ({form}):\n{}",
            text.lines()
                .filter(|l| l.contains(&form))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The environment for a program: the settings, every log at trace.
fn traced(settings: &Settings) -> Vec<(String, String)> {
    let mut env = settings.to_env();
    env.push(("RUST_LOG".into(), "trace,lapin=trace,redis=trace".into()));
    env.push(("RW_LOG__FORMAT".into(), "json".into()));
    env
}

fn run(settings: &Settings, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reservation-worker"))
        .args(args)
        .env_clear()
        .envs(traced(settings))
        .output()
        .unwrap()
}

fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a worker process until its log shows `until`, then stops it and
/// returns everything it printed.
async fn worker_until(settings: &Settings, name: &str, until: &str) -> String {
    let mut settings = settings.clone();
    settings.log.level = "trace,lapin=trace,redis=trace".into();
    settings.log.format = reservation_worker::config::LogFormat::Json;
    let mut worker = WorkerProcess::spawn(&settings, name);
    let log = worker.log().clone();
    eventually(&format!("{name} to log {until:?}"), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(until).then_some(())
    })
    .await;
    worker.terminate().await;
    std::fs::read_to_string(&log).unwrap()
}

/// Nothing listens: the connections are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_show_no_password() {
    let password = "Planted-Refused-7f3a";
    let (mut s, prefix) = isolated_settings();
    s.amqp.url = SecretUrl::new(format!("amqp://guest:{password}@127.0.0.1:1/%2f"));
    s.redis.url = SecretUrl::new(format!("redis://:{password}@127.0.0.1:1/0"));
    let log = worker_until(&s, &format!("{prefix}-refused"), "reconnecting").await;
    assert_hidden("the worker's log", &log, password);
    for args in [
        &["send", "define", "--resource", "r", "--capacity", "1"][..],
        &["inspect", "r"],
        &["status", "--json"],
        &["setup"],
    ] {
        let out = run(&s, args);
        assert!(!out.status.success(), "{args:?}");
        assert_hidden(&format!("{args:?}"), &printed(&out), password);
    }
}

/// Both servers answer, and refuse the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_shows_no_password() {
    let password = "Planted-Wrong-91cd";
    let redis = RedisServer::start(&["--requirepass", "another"]).await;
    let (mut s, prefix) = isolated_settings();
    s.amqp.url = SecretUrl::new(format!("amqp://guest:{password}@127.0.0.1:5672/%2f"));
    s.redis.url = SecretUrl::new(format!("redis://:{password}@127.0.0.1:{}/0", redis.port()));
    let log = worker_until(&s, &format!("{prefix}-wrong"), "ACCESS_REFUSED").await;
    assert_hidden("the worker's log", &log, password);
    for args in [
        &["send", "define", "--resource", "r", "--capacity", "1"][..],
        &["inspect", "r"],
        &["status", "--json"],
    ] {
        let out = run(&s, args);
        assert!(!out.status.success(), "{args:?}");
        assert_hidden(&format!("{args:?}"), &printed(&out), password);
    }
}

/// A user of the broker's own, in a vhost of the test's own, and a Redis
/// that wants the same password: a whole successful run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_run_shows_no_password() {
    let password = "Planted-Good-5e21";
    let (mut s, prefix) = isolated_settings();
    let user = Broker::user(&prefix, password).await;
    let redis = RedisServer::start(&["--requirepass", password]).await;
    s.amqp.url = SecretUrl::new(format!(
        "amqp://{}:{password}@127.0.0.1:5672/{}",
        user.0, user.0
    ));
    s.redis.url = SecretUrl::new(format!("redis://:{password}@127.0.0.1:{}/0", redis.port()));
    let setup = run(&s, &["setup"]);
    assert!(setup.status.success(), "{setup:?}");
    assert_hidden("setup", &printed(&setup), password);

    let port = free_port();
    let mut worker_settings = s.clone();
    worker_settings.http.enabled = true;
    worker_settings.http.bind = "127.0.0.1".into();
    worker_settings.http.port = port;
    worker_settings.log.level = "trace,lapin=trace,redis=trace".into();
    let mut worker = WorkerProcess::spawn(&worker_settings, &format!("{prefix}-good"));
    let send = run(
        &s,
        &["send", "define", "--resource", "kept", "--capacity", "3"],
    );
    assert!(send.status.success(), "{send:?}");
    assert_hidden("send", &printed(&send), password);
    let inspect = eventually("the define to be decided", || async {
        let out = run(&s, &["inspect", "kept"]);
        out.status.success().then_some(out)
    })
    .await;
    assert_hidden("inspect", &printed(&inspect), password);
    let status = run(&s, &["status", "--resource", "kept", "--json"]);
    assert!(status.status.success(), "{status:?}");
    assert_hidden("status --json", &printed(&status), password);
    let metrics = reqwest_metrics(port).await;
    assert!(metrics.contains("reservation_commands_total"), "{metrics}");
    assert_hidden("/metrics", &metrics, password);
    assert!(worker.terminate().await.success());
    let log = std::fs::read_to_string(worker.log()).unwrap();
    assert!(log.contains("consuming"), "the run got going");
    assert_hidden("the worker's log", &log, password);
}

/// `GET /metrics` on the loopback port.
async fn reqwest_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

/// A broker user with its own vhost, removed when dropped.
struct Broker(String);

impl Broker {
    async fn user(name: &str, password: &str) -> Broker {
        for args in [
            vec!["add_vhost", name],
            vec!["add_user", name, password],
            vec!["set_permissions", "-p", name, name, ".*", ".*", ".*"],
        ] {
            let out = tokio::process::Command::new("rabbitmqctl")
                .args(&args)
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
        }
        Broker(name.to_string())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        for args in [["delete_user", &self.0], ["delete_vhost", &self.0]] {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(args)
                .output();
        }
    }
}
