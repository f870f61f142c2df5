//! `RedisServer`: a `redis-server` of a test's own, on a free port, for the
//! tests that break Redis (out of memory, read-only, a flush, refused
//! credentials). The shared Redis on 6379 is never touched. Dropping one
//! kills it by its PID and removes its directory.

use crate::helpers::eventually;
use reservation_worker::config::SecretUrl;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A private Redis.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    /// The password the test set, for its own admin connections.
    password: std::sync::Mutex<Option<String>>,
}

/// A free port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts one without persistence, with `extra` arguments, and waits
    /// until it answers.
    pub async fn start(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("redis")
            .join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        let password = extra
            .iter()
            .position(|a| *a == "--requirepass")
            .and_then(|i| extra.get(i + 1))
            .map(|p| p.to_string());
        let server = RedisServer {
            child,
            port,
            dir,
            password: std::sync::Mutex::new(password),
        };
        eventually("the private redis-server to answer", || async {
            server.try_cmd(&["PING"]).await.ok()
        })
        .await;
        server
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database 0.
    pub fn url(&self) -> SecretUrl {
        SecretUrl::new(format!("redis://127.0.0.1:{}/0", self.port))
    }

    /// Sets the password the test's own connections use from now on.
    pub fn use_password(&self, password: Option<&str>) {
        *self.password.lock().unwrap() = password.map(str::to_owned);
    }

    /// Runs one command on a fresh connection of the test's own.
    pub async fn try_cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let password = self.password.lock().unwrap().clone();
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        };
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await
    }

    /// Runs one command; panics on an error.
    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        self.try_cmd(args)
            .await
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// How many error replies with `code` the server has sent
    /// (`INFO errorstats`).
    pub async fn errors(&self, code: &str) -> u64 {
        let info: String =
            redis::from_redis_value(self.cmd(&["INFO", "errorstats"]).await).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("errorstat_{code}:count=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// How many times `command` ran (`INFO commandstats`).
    pub async fn calls(&self, command: &str) -> u64 {
        let info: String =
            redis::from_redis_value(self.cmd(&["INFO", "commandstats"]).await).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until `what` has grown by at least `by` from `from`.
    pub async fn wait_for_growth<F, Fut>(&self, what: &str, from: u64, by: u64, read: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = u64>,
    {
        eventually(&format!("{what} to grow by {by}"), || async {
            (read().await >= from + by).then_some(())
        })
        .await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
