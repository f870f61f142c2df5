//! `WorkerProcess`: the real `reservation-worker run` binary as a child
//! process, configured through the environment from a test's settings, that
//! a test can SIGKILL, SIGSTOP / SIGCONT and SIGTERM. Dropping one kills it,
//! so no worker outlives a failed test.

use crate::helpers::DEADLINE;
use reservation_worker::config::Settings;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// One worker replica in its own process.
pub struct WorkerProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts `reservation-worker run --name NAME` with `settings`. Its
    /// stdout and stderr are appended to `<CARGO_TARGET_TMPDIR>/faults/NAME.log`.
    /// Its health endpoint, if enabled, takes any free port unless the
    /// settings name one.
    pub fn spawn(settings: &Settings, name: &str) -> WorkerProcess {
        Self::spawn_with_clock(settings, name, None)
    }

    /// Like [`WorkerProcess::spawn`], with the process's wall clock moved
    /// by `offset` (e.g. `+90s`, `-90s`) by libfaketime: a replica whose
    /// clock is that far off. Its monotonic clock (timers, timeouts) is
    /// left alone.
    pub fn spawn_with_clock(
        settings: &Settings,
        name: &str,
        offset: Option<&str>,
    ) -> WorkerProcess {
        Self::start(settings, name, offset, &[])
    }

    /// Like [`WorkerProcess::spawn`], with extra environment variables
    /// set on the worker, e.g. `RW_FAILPOINTS` to make it abort at named
    /// points (`src/failpoint.rs`).
    pub fn spawn_with_env(settings: &Settings, name: &str, env: &[(&str, &str)]) -> WorkerProcess {
        Self::start(settings, name, None, env)
    }

    fn start(
        settings: &Settings,
        name: &str,
        offset: Option<&str>,
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_reservation-worker"));
        command
            .args(["run", "--name", name])
            // Only what the test decides: no stray RW_* from the caller.
            .env_clear()
            .envs(settings.to_env())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for passthrough in ["PATH", "RUST_LOG", "RUST_BACKTRACE"] {
            if let Ok(v) = std::env::var(passthrough) {
                command.env(passthrough, v);
            }
        }
        if let Some(offset) = offset {
            // Preloaded into the worker itself (not run under the
            // `faketime` wrapper), so signals reach the worker.
            command
                .env("LD_PRELOAD", libfaketime())
                .env("FAKETIME", offset)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        command.envs(env.iter().copied());
        let child = command.spawn().expect("spawn the worker binary");
        WorkerProcess {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Its resident memory now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the worker's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{}/status", self.child.id()))
    }

    /// Where its output goes.
    pub fn log(&self) -> &PathBuf {
        &self.log
    }

    /// SIGKILL, then reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: frozen mid-flight, sockets open, nothing read or sent.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Whether it has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Panics (naming the log) if it exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "worker {} exited ({status}) on its own; see {}",
                self.name,
                self.log.display()
            );
        }
    }

    /// SIGTERM, then waits for it to drain and exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker {} did not exit after SIGTERM; see {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.is_running() {
            // SIGKILL also ends a stopped process.
            self.kill();
        }
    }
}

/// Where the `faketime` package put its library.
fn libfaketime() -> PathBuf {
    let candidates = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|arch| arch.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")]);
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("libfaketime (apt-get install faketime; scripts/test installs it)")
}
