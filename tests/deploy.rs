//! Checks the deployment files under `deploy/` against the code: every YAML
//! document parses, the probes and port match the worker's HTTP endpoint,
//! every environment variable given to the worker is one it reads, the
//! autoscaler watches the queue the workers consume, the drain fits the grace
//! periods, the worker scales under Compose, and the image runs as non-root.
//!
//! No cluster or Docker engine is needed: these are static checks.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One parsed YAML document and the file it came from.
struct Doc {
    file: String,
    value: Value,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// Every document of every YAML file under deploy/, with anchors expanded
/// and `<<` merge keys applied, as JSON values.
fn documents() -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let file = path.strip_prefix(root()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, de) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let mut yaml = serde_norway::Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: document {i} is not YAML: {e}"));
            yaml.apply_merge()
                .unwrap_or_else(|e| panic!("{file}: document {i}: merge keys: {e}"));
            if yaml.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let value = serde_json::to_value(&yaml)
                .unwrap_or_else(|e| panic!("{file}: document {i} is not plain data: {e}"));
            docs.push(Doc {
                file: file.clone(),
                value,
            });
        }
    }
    docs
}

/// The Kubernetes documents (those with a `kind`).
fn k8s(docs: &[Doc]) -> Vec<&Doc> {
    docs.iter()
        .filter(|d| d.value.get("kind").is_some())
        .collect()
}

fn one<'a>(docs: &'a [Doc], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|d| &d.value)
        .filter(|v| v["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0]
}

fn compose(docs: &[Doc]) -> &Value {
    &docs
        .iter()
        .find(|d| d.file.ends_with("docker-compose.yml"))
        .expect("deploy/docker-compose.yml")
        .value
}

/// config/default.toml, the settings the binary starts from.
fn defaults() -> toml::Table {
    toml::from_str(include_str!("../config/default.toml")).expect("config/default.toml")
}

fn default_grace_secs() -> i64 {
    defaults()["worker"]["shutdown_grace_secs"]
        .as_integer()
        .expect("worker.shutdown_grace_secs")
}

/// Environment variables the binary's command line reads (`env = ...`),
/// as its `--help` of every subcommand lists them (`[env: NAME=...]`).
fn cli_env_vars() -> BTreeSet<String> {
    fn help(args: &[String]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_reservation-worker"))
            .args(args)
            .arg("--help")
            .output()
            .expect("run the binary");
        assert!(out.status.success(), "{args:?} --help: {out:?}");
        String::from_utf8(out.stdout).expect("UTF-8 help")
    }
    fn walk(args: Vec<String>, out: &mut BTreeSet<String>) {
        let text = help(&args);
        for part in text.split("[env: ").skip(1) {
            let name = part.split(['=', ']']).next().unwrap_or_default();
            out.insert(name.to_string());
        }
        let commands = text
            .split_once("Commands:\n")
            .map(|(_, rest)| rest.split("\n\n").next().unwrap_or_default())
            .unwrap_or_default();
        for line in commands.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if name != "help" {
                let mut sub = args.clone();
                sub.push(name.to_string());
                walk(sub, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(Vec::new(), &mut out);
    assert!(
        out.contains("RW_CONFIG"),
        "the walk reads the help: {out:?}"
    );
    out
}

/// Whether the binary reads `name`: the two URLs, `RW_<SECTION>__<KEY>` for
/// a key of config/default.toml, a command-line `env`, or `RUST_LOG`.
fn binary_reads(name: &str, defaults: &toml::Table, cli: &BTreeSet<String>) -> bool {
    if matches!(name, "AMQP_URL" | "REDIS_URL" | "RUST_LOG") || cli.contains(name) {
        return true;
    }
    let Some(rest) = name.strip_prefix("RW_") else {
        return false;
    };
    let parts: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
    match parts.as_slice() {
        [section, key] => defaults
            .get(section)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(key)),
        _ => false,
    }
}

/// The containers of a workload (Deployment, Job) that run the worker image.
fn worker_containers(doc: &Value) -> Vec<&Value> {
    doc["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| {
                    c["image"]
                        .as_str()
                        .is_some_and(|i| i.contains("reservation-worker"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The Compose services built from deploy/Dockerfile (or using its image).
fn worker_services(compose: &Value) -> Vec<(&String, &Value)> {
    compose["services"]
        .as_object()
        .expect("services")
        .iter()
        .filter(|(_, s)| {
            s["build"]["dockerfile"]
                .as_str()
                .is_some_and(|d| d.ends_with("Dockerfile"))
                || s["image"]
                    .as_str()
                    .is_some_and(|i| i.contains("reservation-worker"))
        })
        .collect()
}

/// A Compose environment as (name, value) pairs: map or `NAME=value` list.
fn compose_env(service: &Value) -> Vec<(String, Option<String>)> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(list) => list
            .iter()
            .map(|item| {
                let s = item.as_str().expect("NAME=value");
                match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (s.to_string(), None),
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The drain the worker will actually use: the env override, else the default.
fn effective_grace(env: &[(String, Option<String>)]) -> i64 {
    env.iter()
        .find(|(k, _)| k == "RW_WORKER__SHUTDOWN_GRACE_SECS")
        .and_then(|(_, v)| v.as_deref())
        .map(|v| {
            v.parse()
                .expect("RW_WORKER__SHUTDOWN_GRACE_SECS is a number")
        })
        .unwrap_or_else(default_grace_secs)
}

fn k8s_env(container: &Value) -> Vec<(String, Option<String>)> {
    container["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .map(|e| {
                    (
                        e["name"].as_str().expect("env name").to_string(),
                        e["value"].as_str().map(str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A Compose duration such as `40s`, `1m30s` or `1m`, in seconds.
fn compose_secs(duration: &str) -> i64 {
    let mut total = 0;
    let mut digits = String::new();
    for c in duration.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().expect("a number before the unit");
        digits.clear();
        total += match c {
            'h' => n * 3600,
            'm' => n * 60,
            's' => n,
            other => panic!("unsupported unit {other} in {duration}"),
        };
    }
    assert!(digits.is_empty(), "{duration}: a unit is required");
    total
}

#[test]
fn every_yaml_file_parses_and_the_expected_ones_exist() {
    let docs = documents();
    let files: BTreeSet<&str> = docs.iter().map(|d| d.file.as_str()).collect();
    for expected in [
        "deploy/docker-compose.yml",
        "deploy/k8s/deployment.yaml",
        "deploy/k8s/secret.example.yaml",
        "deploy/k8s/job-setup.yaml",
        "deploy/k8s/keda-scaledobject.yaml",
    ] {
        assert!(files.contains(expected), "{expected} is missing");
    }
    for doc in k8s(&docs) {
        let v = &doc.value;
        assert!(v["apiVersion"].is_string(), "{}: apiVersion", doc.file);
        assert!(
            v["metadata"]["name"].is_string(),
            "{}: metadata.name",
            doc.file
        );
    }
    for kind in [
        "Deployment",
        "Secret",
        "Job",
        "ScaledObject",
        "TriggerAuthentication",
    ] {
        one(&docs, kind);
    }
}

#[test]
fn deployment_probes_and_port_match_the_http_endpoint() {
    let docs = documents();
    let port = defaults()["http"]["port"]
        .as_integer()
        .expect("http.port in config/default.toml");
    assert_eq!(port, 9090, "the manifests assume the default port 9090");

    let deployment = one(&docs, "Deployment");
    let containers = worker_containers(deployment);
    assert_eq!(containers.len(), 1, "one worker container");
    let c = containers[0];
    let ports = c["ports"].as_array().expect("ports");
    let http = ports
        .iter()
        .find(|p| p["name"] == "http")
        .expect("a port named http");
    assert_eq!(http["containerPort"], port);

    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}.httpGet.path");
        assert!(
            get["port"] == "http" || get["port"] == port,
            "{probe} must target port http ({port}), not {}",
            get["port"]
        );
    }

    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn deployment_drains_and_runs_locked_down() {
    let docs = documents();
    let deployment = one(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = worker_containers(deployment)[0];

    let grace = effective_grace(&k8s_env(c));
    let termination = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > grace,
        "terminationGracePeriodSeconds {termination} must exceed the {grace} s drain"
    );

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    for field in ["requests", "limits"] {
        assert!(
            c["resources"][field]["memory"].is_string(),
            "resources.{field}.memory"
        );
    }
}

#[test]
fn every_env_var_given_to_the_worker_is_one_it_reads() {
    let docs = documents();
    let defaults = defaults();
    let cli = cli_env_vars();
    let mut seen = Vec::new();
    for doc in k8s(&docs) {
        for c in worker_containers(&doc.value) {
            for (name, _) in k8s_env(c) {
                seen.push((doc.file.clone(), name));
            }
        }
    }
    for (service, s) in worker_services(compose(&docs)) {
        for (name, _) in compose_env(s) {
            seen.push((format!("docker-compose.yml service {service}"), name));
        }
    }
    assert!(
        seen.iter().any(|(_, n)| n == "AMQP_URL"),
        "no worker env found at all"
    );
    let unknown: Vec<String> = seen
        .iter()
        .filter(|(_, name)| !binary_reads(name, &defaults, &cli))
        .map(|(file, name)| format!("{file}: {name}"))
        .collect();
    assert!(
        unknown.is_empty(),
        "environment variables the binary does not read: {unknown:?}"
    );

    // The check itself can fail.
    assert!(binary_reads("RW_AMQP__PREFETCH", &defaults, &cli));
    assert!(!binary_reads("RW_AMQP__PREFECTH", &defaults, &cli));
    assert!(!binary_reads("RW_NOPE__URL", &defaults, &cli));
    assert!(!binary_reads("RW_AMQP_PREFETCH", &defaults, &cli));
    assert!(!binary_reads("AMQP_URI", &defaults, &cli));
}

#[test]
fn secret_references_exist_in_the_example_secret() {
    let docs = documents();
    let secret = one(&docs, "Secret");
    let name = secret["metadata"]["name"].as_str().unwrap();
    let keys: BTreeSet<&str> = ["stringData", "data"]
        .iter()
        .filter_map(|f| secret[*f].as_object())
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();

    let mut refs = Vec::new();
    for doc in k8s(&docs) {
        for c in worker_containers(&doc.value) {
            for e in c["env"].as_array().into_iter().flatten() {
                let r = &e["valueFrom"]["secretKeyRef"];
                if r.is_object() {
                    refs.push((doc.file.clone(), r["name"].clone(), r["key"].clone()));
                }
            }
        }
    }
    let auth = one(&docs, "TriggerAuthentication");
    for r in auth["spec"]["secretTargetRef"]
        .as_array()
        .expect("secretTargetRef")
    {
        refs.push((
            "TriggerAuthentication".into(),
            r["name"].clone(),
            r["key"].clone(),
        ));
    }
    assert!(refs.len() >= 3, "{refs:?}");
    for (file, secret_name, key) in refs {
        assert_eq!(secret_name, name, "{file}: secret name");
        assert!(
            keys.contains(key.as_str().unwrap_or("")),
            "{file}: key {key} is not in the example secret"
        );
    }
}

#[test]
fn keda_scales_the_deployment_on_the_commands_queue() {
    let docs = documents();
    let queue = defaults()["amqp"]["commands_queue"]
        .as_str()
        .expect("amqp.commands_queue")
        .to_string();
    let deployment = one(&docs, "Deployment");
    let scaled = one(&docs, "ScaledObject");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let triggers = scaled["spec"]["triggers"].as_array().expect("triggers");
    let rabbit: Vec<&Value> = triggers
        .iter()
        .filter(|t| t["type"] == "rabbitmq")
        .collect();
    assert_eq!(rabbit.len(), 1, "one rabbitmq trigger");
    let t = rabbit[0];
    // Every queue the workers consume, partitions included, summed through
    // the management API; never the dead letters or the unrouted events.
    assert_eq!(t["metadata"]["protocol"], "http");
    assert_eq!(t["metadata"]["useRegex"], "true");
    assert_eq!(t["metadata"]["operation"], "sum");
    let pattern = t["metadata"]["queueName"].as_str().expect("queueName");
    let matches = |name: &str| regex_lite_match(pattern, name);
    let dead = defaults()["amqp"]["dead_letter_queue"]
        .as_str()
        .unwrap()
        .to_string();
    let unrouted = defaults()["amqp"]["unrouted_queue"]
        .as_str()
        .unwrap()
        .to_string();
    for name in [queue.clone(), format!("{queue}.p0"), format!("{queue}.p17")] {
        assert!(matches(&name), "{pattern} counts {name}");
    }
    for name in [dead, unrouted, format!("x{queue}"), format!("{queue}.px")] {
        assert!(!matches(&name), "{pattern} leaves out {name}");
    }
    assert_eq!(t["metadata"]["mode"], "QueueLength");
    assert!(
        t["metadata"]["value"]
            .as_str()
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|v| v > 0),
        "value is a positive number in a string"
    );

    let auth = one(&docs, "TriggerAuthentication");
    assert_eq!(t["authenticationRef"]["name"], auth["metadata"]["name"]);
    let host = auth["spec"]["secretTargetRef"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["parameter"] == "host")
        .expect("a secretTargetRef for parameter host");
    assert_eq!(host["name"], one(&docs, "Secret")["metadata"]["name"]);
}

#[test]
fn setup_job_runs_setup() {
    let docs = documents();
    let job = one(&docs, "Job");
    let c = worker_containers(job);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["args"], serde_json::json!(["setup"]));
}

#[test]
fn compose_worker_scales_and_drains() {
    let docs = documents();
    let compose = compose(&docs);
    let services = &compose["services"];
    let worker = &services["worker"];
    assert!(worker.is_object(), "a service named worker");
    assert!(
        worker.get("container_name").is_none(),
        "container_name prevents --scale"
    );
    assert!(
        worker.get("ports").is_none(),
        "a fixed host port prevents --scale"
    );
    assert_eq!(worker["command"], serde_json::json!(["run"]));
    let grace = effective_grace(&compose_env(worker));
    let stop = compose_secs(
        worker["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period"),
    );
    assert!(
        stop > grace,
        "stop_grace_period {stop} s must exceed the {grace} s drain"
    );

    assert_eq!(services["setup"]["command"], serde_json::json!(["setup"]));
    let names: BTreeSet<&str> = worker_services(compose)
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["setup", "worker"]));

    assert!(
        services["rabbitmq"]["image"]
            .as_str()
            .is_some_and(|i| i.contains("management")),
        "RabbitMQ with the management plugin"
    );
    let redis = services["redis"]["command"].to_string();
    assert!(
        redis.contains("\"--appendonly\",\"yes\"")
            && redis.contains("\"--appendfsync\",\"always\""),
        "Redis with AOF fsynced on every write: {redis}"
    );
}

#[test]
fn compose_durations_parse() {
    assert_eq!(compose_secs("40s"), 40);
    assert_eq!(compose_secs("1m30s"), 90);
    assert_eq!(compose_secs("2m"), 120);
}

/// The stages of a Dockerfile: (FROM line, instructions), line continuations
/// joined and comments dropped.
fn dockerfile_stages(text: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    let mut global_args = Vec::new();
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for line in lines {
        let upper = line.to_uppercase();
        if upper.starts_with("FROM ") {
            stages.push((line, Vec::new()));
        } else if let Some((_, body)) = stages.last_mut() {
            body.push(line);
        } else {
            global_args.push(line);
        }
    }
    (stages, global_args)
}

fn instruction<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (head, rest) = line.split_once(char::is_whitespace)?;
    head.eq_ignore_ascii_case(name).then(|| rest.trim())
}

fn version(s: &str) -> Vec<u32> {
    s.split('.').map(|p| p.parse().unwrap()).collect()
}

#[test]
fn dockerfile_runs_as_non_root_on_a_recent_enough_toolchain() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let (stages, global_args) = dockerfile_stages(&text);
    assert!(stages.len() >= 2, "a multi-stage build");

    let (_, runtime) = stages.last().unwrap();
    let users: Vec<&str> = runtime
        .iter()
        .filter_map(|l| instruction(l, "USER"))
        .collect();
    let user = users.last().expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid != "root" && uid != "0",
        "the runtime stage runs as {user}"
    );
    assert!(
        runtime
            .iter()
            .filter_map(|l| instruction(l, "EXPOSE"))
            .any(|p| p
                .split_whitespace()
                .any(|p| p.trim_end_matches("/tcp") == "9090")),
        "EXPOSE 9090"
    );

    // The Rust image must be at least Cargo.toml's rust-version.
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let msrv = manifest["package"]["rust-version"].as_str().unwrap();
    let build_from = &stages
        .iter()
        .find(|(from, _)| from.contains("rust:"))
        .expect("a stage FROM rust:")
        .0;
    let mut image = build_from.split_whitespace().nth(1).unwrap().to_string();
    for arg in &global_args {
        if let Some((name, default)) = instruction(arg, "ARG").and_then(|a| a.split_once('=')) {
            image = image.replace(&format!("${{{name}}}"), default);
        }
    }
    let tag = image.strip_prefix("rust:").unwrap();
    let tag_version: String = tag
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    assert!(
        !tag_version.is_empty() && version(&tag_version) >= version(msrv),
        "{image} is older than rust-version {msrv}"
    );
}

/// Whether the trigger's pattern, `^Q(\.p[0-9]+)?$` with `Q` the command
/// queue's name escaped, matches `name`: the one pattern shape the trigger
/// uses, checked without a regex engine.
fn regex_lite_match(pattern: &str, name: &str) -> bool {
    let Some(body) = pattern
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix(r"(\.p[0-9]+)?$"))
    else {
        panic!("the trigger's pattern {pattern} is not ^QUEUE(\\.p[0-9]+)?$");
    };
    let queue = body.replace(r"\.", ".");
    assert!(!queue.contains('\\'), "only dots are escaped in {pattern}");
    match name.strip_prefix(&queue) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(".p")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}
