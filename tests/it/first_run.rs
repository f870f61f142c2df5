//! A first run that explains itself: what a newcomer sees when they skip
//! `setup` or start a second worker on one host. Each message says what to
//! run or set, on one line, with no client library's log around it.

use crate::helpers::*;
use crate::svg::assert_well_formed;
use reservation_worker::config::Settings;
use std::process::Output;

/// `reservation-worker ARGS` with exactly `settings` in its environment.
fn cli(settings: &Settings, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_reservation-worker"));
    command.args(args).env_clear().envs(settings.to_env());
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.output().unwrap()
}

/// Exit code 1 and one line on stderr that contains `expected`.
fn assert_explains(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains(expected),
        "stderr lacks {expected:?}:\n{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line, no logs:\n{stderr}");
}

#[test]
fn send_inspect_status_and_events_before_setup_say_to_run_setup() {
    // Names nobody declared: the broker and Redis as before `setup`.
    let (settings, _) = isolated_settings();
    let sent = cli(
        &settings,
        &["send", "define", "--resource", "hall", "--capacity", "3"],
    );
    assert_explains(&sent, "run `reservation-worker setup` first");
    assert!(sent.stdout.is_empty(), "no command_id: nothing was queued");

    let inspected = cli(&settings, &["inspect", "hall"]);
    assert_explains(&inspected, "`reservation-worker setup` never ran");

    let status = cli(&settings, &["status"]);
    assert_explains(&status, "run `reservation-worker setup`");

    let events = cli(&settings, &["events", "--timeout-secs", "1"]);
    assert_explains(&events, "run `reservation-worker setup` first");
}

#[tokio::test]
async fn a_second_worker_on_a_taken_port_says_which_and_how_to_change_it() {
    let app = TestApp::new().await;
    // The first worker's endpoint, as far as the second can tell.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut settings = app.settings.clone();
    settings.http.enabled = true;
    settings.http.bind = "127.0.0.1".into();
    settings.http.port = port;
    let out = cli(
        &settings,
        &["run", "--name", &format!("{}-clash", app.prefix())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    for expected in [
        format!("binding the HTTP endpoint to 127.0.0.1:{port}"),
        "RW_HTTP__PORT".to_string(),
    ] {
        assert!(
            stderr.contains(&expected),
            "stderr lacks {expected:?}:\n{stderr}"
        );
    }
    drop(taken);
    app.cleanup().await;
}

#[tokio::test]
async fn events_prints_one_resources_outcomes_as_they_are_published() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let mut app = TestApp::new().await;
    app.start_worker();
    let mut watcher = tokio::process::Command::new(env!("CARGO_BIN_EXE_reservation-worker"))
        .args(["events", "--resource", "stage", "--count", "2"])
        .env_clear()
        .envs(app.settings.to_env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its queue is bound once it says it listens: nothing after is missed.
    let mut stderr = BufReader::new(watcher.stderr.take().unwrap());
    let mut said = String::new();
    tokio::time::timeout(DEADLINE, stderr.read_line(&mut said))
        .await
        .expect("events says it listens")
        .unwrap();
    assert!(
        said.starts_with("listening for outcome events of stage"),
        "{said}"
    );

    app.send(&define("other-d", "backstage", 5, None)).await;
    app.outcome("other-d").await;
    app.send(&define("stage-d", "stage", 5, None)).await;
    app.send(&reserve("stage-r", "stage", "fan", 9)).await;
    let status = tokio::time::timeout(DEADLINE, watcher.wait())
        .await
        .expect("events stops after --count events")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut out = String::new();
    watcher
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    let printed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = printed
        .iter()
        .map(|e| e["command_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["stage-d", "stage-r"], "{out}");
    assert_eq!(printed[1]["reason"], "sold_out");
    app.cleanup().await;
}

#[tokio::test]
async fn events_gives_up_with_a_hint_when_nothing_comes() {
    // Set up, but no worker runs.
    let app = TestApp::new().await;
    let out = cli(&app.settings, &["events", "--timeout-secs", "1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.ends_with(
            "error: 0 events of 1 within 1 s; are workers running? (`reservation-worker status`)\n"
        ),
        "{stderr}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_rush_writes_its_report_and_says_where() {
    let mut app = TestApp::new().await;
    app.start_worker();
    let report = std::env::temp_dir().join(format!("{}-rush.svg", app.prefix()));
    let resource = format!("{}-hall", app.prefix());
    // Off the runtime's thread: the worker runs on it.
    let settings = app.settings.clone();
    let (r, res) = (report.clone(), resource.clone());
    let out = tokio::task::spawn_blocking(move || {
        cli(
            &settings,
            &[
                "rush",
                "--resource",
                &res,
                "--commands",
                "400",
                "--capacity",
                "100",
                "--report",
                r.to_str().unwrap(),
            ],
        )
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(&format!("report          {}\n", report.display())),
        "{stdout}"
    );
    let svg = std::fs::read_to_string(&report).unwrap();
    assert_well_formed(&svg);
    for text in [
        "seats remaining",
        "Outcomes per second",
        "Publish to outcome: p50",
    ] {
        assert!(svg.contains(text), "{text} missing");
    }
    std::fs::remove_file(&report).unwrap();
    app.cleanup().await;
}
