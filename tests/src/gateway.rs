//! Runs the real `weir` binary for black-box tests.
//!
//! The config is written to a fresh temporary folder (so relative paths and
//! state files stay there) with both listeners on port 0; the launcher reads
//! the JSON log on stderr, learns the bound addresses from the `listening`
//! line, and keeps every log line for assertions.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running gateway; killed when dropped.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// How to start a gateway.
pub struct GatewayBuilder {
    bin: PathBuf,
    config: Option<String>,
    env: Vec<(String, String)>,
    files: Vec<(String, Vec<u8>)>,
    dir: Option<PathBuf>,
    cwd_config: bool,
    args: Vec<String>,
}

impl GatewayBuilder {
    /// Set an environment variable for the process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Write a file into the gateway's folder before starting.
    pub fn file(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.into(), bytes.into()));
        self
    }

    /// Use this folder (kept) instead of a fresh temporary one.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Start with no `--config` (embedded default, or `./weir.toml` if written).
    pub fn without_config_flag(mut self) -> Self {
        self.cwd_config = true;
        self
    }

    /// Add a command-line argument after `serve`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Listen on free ports whatever the config says.
    pub fn listen_overrides(self) -> Self {
        self.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
    }

    /// Start and wait until it listens.
    pub fn start(self) -> Gateway {
        let (tmp, dir) = match &self.dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir().unwrap();
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        for (name, bytes) in &self.files {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(path, bytes).unwrap();
        }
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve");
        if let Some(config) = &self.config {
            std::fs::write(dir.join("weir.toml"), config).unwrap();
            if !self.cwd_config {
                cmd.arg("--config").arg(dir.join("weir.toml"));
            }
        }
        cmd.args(&self.args);
        cmd.args(["--log-format", "json"])
            .current_dir(&dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("cannot start weir");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("\"message\":\"listening\"")
                        && let Ok(v) = serde_json::from_str::<Value>(&line)
                    {
                        let parse = |k: &str| v[k].as_str().and_then(|s| s.parse().ok());
                        if let (Some(a), Some(b)) = (parse("listen"), parse("admin")) {
                            let _ = tx.send((a, b));
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok((addr, admin)) => {
                    return Gateway {
                        child,
                        addr,
                        admin,
                        logs,
                        dir,
                        _tmp: tmp,
                    };
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        // Let the reader drain the last lines.
                        std::thread::sleep(Duration::from_millis(100));
                        panic!(
                            "weir exited with {status} before listening:\n{}",
                            logs.lock().unwrap().join("\n")
                        );
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "weir did not listen within 120 s:\n{}",
                            logs.lock().unwrap().join("\n")
                        );
                    }
                }
            }
        }
    }
}

impl Gateway {
    /// Prepare a gateway with this config text.
    pub fn builder(bin: impl AsRef<Path>, config: &str) -> GatewayBuilder {
        GatewayBuilder {
            bin: bin.as_ref().to_path_buf(),
            config: Some(config.to_string()),
            env: Vec::new(),
            files: Vec::new(),
            dir: None,
            cwd_config: false,
            args: Vec::new(),
        }
    }

    /// Prepare a gateway with no config file at all.
    pub fn embedded(bin: impl AsRef<Path>) -> GatewayBuilder {
        GatewayBuilder {
            bin: bin.as_ref().to_path_buf(),
            config: None,
            env: Vec::new(),
            files: Vec::new(),
            dir: None,
            cwd_config: true,
            args: Vec::new(),
        }
    }

    /// Start with this config.
    pub fn start(bin: impl AsRef<Path>, config: &str) -> Gateway {
        Self::builder(bin, config).start()
    }

    /// A client-API URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// An admin-API URL.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Wait until a log line contains `needle`; panics after `within`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        self.wait_for_logs(within, |logs| {
            logs.iter()
                .find(|l| l.contains(needle))
                .cloned()
                .ok_or_else(|| format!("no log line containing {needle:?}"))
        })
    }

    /// How many log lines contain `needle`, once at least `count` do
    /// (the logs are read from the process as it writes them). Panics if
    /// fewer arrive within `within`.
    pub fn wait_for_log_count(&self, needle: &str, count: usize, within: Duration) -> usize {
        self.wait_for_logs(within, |logs| {
            let seen = logs.iter().filter(|l| l.contains(needle)).count();
            if seen >= count {
                Ok(seen)
            } else {
                Err(format!(
                    "{seen} log lines containing {needle:?}, not {count},"
                ))
            }
        })
    }

    /// Look at the logs every 20 ms until `check` accepts them; panics with
    /// its last complaint and the logs after `within`.
    fn wait_for_logs<T>(
        &self,
        within: Duration,
        check: impl Fn(&[String]) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let logs = self.logs();
            match check(&logs) {
                Ok(found) => return found,
                Err(why) => assert!(
                    Instant::now() < deadline,
                    "{why} within {within:?}:\n{}",
                    logs.join("\n")
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send a signal (`TERM`, `HUP`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Wait for the process to exit; `None` if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The resident set size in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// Context switches so far of the gateway's thread named `name` (a
    /// thread that sleeps between bits of work switches out once per
    /// wake-up), from `/proc` (Linux); panics if there is no such thread.
    pub fn thread_switches(&self, name: &str) -> u64 {
        let tasks = format!("/proc/{}/task", self.child.id());
        for task in std::fs::read_dir(&tasks).unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            return status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        }
        panic!("the gateway has no thread named {name:?}");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident set size of a process in KiB, from `/proc`.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time a process has used in user space and in the kernel, from
/// `/proc` (clock ticks at 100 Hz on Linux).
pub fn cpu_times(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        let ticks = fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        Duration::from_millis(ticks * 10)
    };
    // utime and stime are fields 14 and 15 of the line; the first field
    // after the parenthesis (state) is field 3.
    (ticks(14 - 3), ticks(15 - 3))
}

/// Run `weir` with arguments; returns (exit code, stdout, stderr).
pub fn run(bin: impl AsRef<Path>, args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(bin.as_ref())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("cannot run weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
