//! The producer examples in `examples/` run: each publishes a define and a
//! reserve with confirms against the real broker, a real worker decides
//! them, and each prints the outcome it waited for, both bodies checked
//! against `schema/` by the example itself. `scripts/prepare-examples`
//! (run by `scripts/test`) installs their packages.

use crate::helpers::*;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs an example program with the app's names, the way a producer would
/// configure it, and returns what it printed.
async fn run_example(app: &TestApp, program: PathBuf, script: &str, resource: &str) -> String {
    assert!(
        program.exists(),
        "{} is missing: run scripts/prepare-examples (scripts/test does)",
        program.display()
    );
    let a = &app.settings.amqp;
    let out = tokio::process::Command::new(&program)
        .arg(root().join(script))
        .env("AMQP_URL", a.url.expose())
        .env("RW_AMQP__COMMANDS_EXCHANGE", &a.commands_exchange)
        .env("RW_AMQP__EVENTS_EXCHANGE", &a.events_exchange)
        .env("RESOURCE_ID", resource)
        .env("TIMEOUT_SECS", DEADLINE.as_secs().to_string())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// What every example prints for its define and its reserve.
fn assert_printed_outcomes(stdout: &str, resource: &str) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("define "), "{stdout}");
    assert!(
        lines[0].ends_with(&format!("on {resource}: define.accepted (remaining 10)")),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with(&format!("on {resource}: reserve.accepted (remaining 8)")),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_python_and_node_producers_publish_and_get_their_outcomes() {
    let mut app = TestApp::new().await;
    app.start_worker();
    let venv_python = root().join("target/examples/venv/bin/python");
    let python = run_example(&app, venv_python, "examples/python/producer.py", "py-hall").await;
    assert_printed_outcomes(&python, "py-hall");

    let node_modules = root().join("examples/node/node_modules");
    assert!(
        node_modules.exists(),
        "examples/node/node_modules is missing: run scripts/prepare-examples (scripts/test does)"
    );
    let node = which("node");
    let node = run_example(&app, node, "examples/node/producer.js", "js-hall").await;
    assert_printed_outcomes(&node, "js-hall");

    // The worker saw them as any producer's commands.
    for resource in ["py-hall", "js-hall"] {
        let summary = app.store.summary(&rid(resource)).await.unwrap().unwrap();
        assert_eq!((summary.capacity, summary.reserved), (10, 2), "{resource}");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn an_example_pointed_at_a_missing_exchange_says_to_run_setup() {
    let app = TestApp::new().await;
    let a = &app.settings.amqp;
    let out = tokio::process::Command::new(root().join("target/examples/venv/bin/python"))
        .arg(root().join("examples/python/producer.py"))
        .env("AMQP_URL", a.url.expose())
        .env(
            "RW_AMQP__COMMANDS_EXCHANGE",
            format!("{}.nowhere", a.commands_exchange),
        )
        .env("RW_AMQP__EVENTS_EXCHANGE", &a.events_exchange)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("run `reservation-worker setup` first"),
        "{stderr}"
    );
    app.cleanup().await;
}

/// The path of `program` on PATH.
fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH: run scripts/test, which installs it"))
}
