//! A real Prometheus scrapes a real worker: every series that the Grafana
//! dashboard and the alerting rules in `deploy/monitoring/` name is
//! scraped, and every rule loads and evaluates. So a renamed metric fails
//! here, not on an operator's dashboard.

use crate::helpers::*;
use crate::http::{free_port, get, with_endpoint};
use crate::process::WorkerProcess;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

fn monitoring() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

/// Every metric name the dashboard's queries and the alerting rules use,
/// as Prometheus stores it (a histogram's `_bucket` series, not its name).
fn names_used() -> BTreeSet<String> {
    let dashboard = std::fs::read_to_string(monitoring().join("grafana-dashboard.json")).unwrap();
    let rules = std::fs::read_to_string(monitoring().join("alerts.yaml")).unwrap();
    let mut names = BTreeSet::new();
    for text in [dashboard, rules] {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("reservation_") {
                names.insert(word.to_string());
            }
        }
    }
    names.insert("up".to_string());
    names
}

/// The alerts `alerts.yaml` defines.
fn alerts_defined() -> BTreeSet<String> {
    let text = std::fs::read_to_string(monitoring().join("alerts.yaml")).unwrap();
    let rules: serde_json::Value = serde_norway::from_str(&text).unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

/// A Prometheus of this test's own, killed when dropped (a failing
/// assertion included). Its configuration and log stay in `dir`.
struct Prometheus {
    child: Mutex<Child>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` every second, with the rules,
    /// in `<CARGO_TARGET_TMPDIR>/prometheus/NAME`.
    fn start(name: &str, target: SocketAddr) -> Prometheus {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("prometheus")
            .join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: reservation-worker\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n",
                rules = monitoring().join("alerts.yaml").display()
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `prometheus` ({e}): run scripts/test, which installs \
                     Debian's prometheus package, or install it (apt-get install prometheus)"
                )
            });
        Prometheus {
            child: Mutex::new(child),
            addr,
            dir,
        }
    }

    /// `GET path` on the HTTP API: its `data`, once it answers. Fails the
    /// test, with Prometheus's log, if the process has exited.
    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let exited = self.child.lock().unwrap().try_wait().unwrap();
        if let Some(status) = exited {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
        tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let (status, body) = get(self.addr, path).await;
        if status != 200 {
            return None;
        }
        let reply: serde_json::Value = serde_json::from_str(&body).ok()?;
        (reply["status"] == "success").then(|| reply["data"].clone())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
    }
}

#[tokio::test]
async fn prometheus_scrapes_every_series_the_dashboard_and_alerts_use() {
    let app = TestApp::new().await;
    let (mut settings, worker_addr) = with_endpoint(app.settings.clone());
    settings.worker.sweep_interval_ms = 100;
    let mut worker = WorkerProcess::spawn(&settings, &format!("{}-scraped", app.prefix()));
    let prometheus = Prometheus::start(app.prefix(), worker_addr);

    // Work that makes every histogram observe once: commits, publishes,
    // and a hold that runs out (the expiry lag).
    app.send(&define("d", "scraped", 5, None)).await;
    app.outcome("d").await;
    app.send(&hold("h", "scraped", "u", 1, 1)).await;
    app.outcome("h").await;
    eventually("the hold to run out", || async {
        let expired = app
            .events()
            .into_iter()
            .any(|e| e.event.command == reservation_worker::domain::CommandKind::Expire);
        expired.then_some(())
    })
    .await;
    let (_, metrics) = get(worker_addr, "/metrics").await;
    assert!(
        metrics.contains("reservation_expiry_lag_seconds_bucket"),
        "{metrics}"
    );

    let wanted = names_used();
    assert!(wanted.len() > 15, "names found: {wanted:?}");
    // Polled until a deadline; then the names still missing are the failure.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let missing = loop {
        let scraped: BTreeSet<String> = prometheus
            .api("/api/v1/label/__name__/values")
            .await
            .and_then(|data| {
                let names = data.as_array()?.iter();
                Some(
                    names
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                )
            })
            .unwrap_or_default();
        let missing: Vec<String> = wanted.difference(&scraped).cloned().collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "not scraped: {missing:?}\nprometheus log:\n{}",
        prometheus.log()
    );

    // Every alerting rule loaded and evaluated without error on real data.
    let rules = eventually("every rule to have been evaluated", || async {
        let data = prometheus.api("/api/v1/rules").await?;
        let groups = data["groups"].as_array()?;
        let rules: Vec<serde_json::Value> = groups
            .iter()
            .filter(|g| g["name"] == "reservation-worker")
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok");
        evaluated.then_some(rules)
    })
    .await;
    let loaded: BTreeSet<String> = rules
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    let defined = alerts_defined();
    assert!(defined.len() >= 8, "alerts in alerts.yaml: {defined:?}");
    assert_eq!(loaded, defined, "rules loaded by Prometheus");

    drop(prometheus);
    assert!(worker.terminate().await.success());
    app.cleanup().await;
}
