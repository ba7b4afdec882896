//! Test harness shared by the integration tests: starts the real `corelog` binary on a free
//! 127.0.0.1 port with a temporary data directory, speaks raw Kafka frames to it, and wraps
//! the librdkafka clients the tests use.
//!
//! Rules followed here: every wait is a polling loop with a generous deadline that prints how
//! long it took; a `Broker` is always killed on drop (also when a test panics), and its log
//! tail is printed when the test is failing.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Buf;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};

mod clients;
mod cluster;
mod raw;

pub use clients::*;
pub use cluster::*;
pub use raw::*;

/// Deadline for a broker to become ready after it is spawned.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline for a clean shutdown after SIGTERM.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);
/// A long-running client loop fails when it makes no progress for this long.
pub const STALL_DEADLINE: Duration = Duration::from_secs(90);

// Kafka error codes used by the tests.
pub const NONE: i16 = 0;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
pub const INVALID_RECORD: i16 = 87;

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `f` every `interval` until it returns `Some`, or panics after `deadline`.
/// Prints how long the wait took.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            eprintln!("[harness] {what}: ok after {:?}", start.elapsed());
            return v;
        }
        if start.elapsed() > deadline {
            panic!("[harness] {what}: not done after {:?}", start.elapsed());
        }
        std::thread::sleep(interval);
    }
}

// ---------------------------------------------------------------------------------------------
// Broker process
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct BrokerOpts {
    pub cores: usize,
    pub sets: Vec<(String, String)>,
    /// Use this data directory instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Environment variables of the broker process (fault injection).
    pub envs: Vec<(String, String)>,
    /// More arguments of `corelog serve` (e.g. `--add-scram`).
    pub args: Vec<String>,
}

impl Default for BrokerOpts {
    fn default() -> Self {
        BrokerOpts {
            cores: 2,
            sets: Vec::new(),
            data_dir: None,
            envs: Vec::new(),
            args: Vec::new(),
        }
    }
}

impl BrokerOpts {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cores(mut self, n: usize) -> Self {
        self.cores = n;
        self
    }
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.sets.push((key.to_string(), value.to_string()));
        self
    }
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }
    pub fn arg(mut self, arg: impl ToString) -> Self {
        self.args.push(arg.to_string());
        self
    }
}

pub struct Broker {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    opts: BrokerOpts,
    starts: u32,
    _tmp: tempfile::TempDir,
}

/// Picks a free port on 127.0.0.1, below the ephemeral range (see `free_ports`): a broker
/// restarted on it must not find it taken as some connection's source port.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

impl Broker {
    /// Starts a broker and waits until it answers ApiVersions.
    pub fn start(opts: BrokerOpts) -> Broker {
        let mut b = Broker::unstarted(opts, free_port());
        b.spawn();
        b
    }

    /// Like `start`, on a given `--listen` port (which a `listeners` property must then name
    /// as PLAINTEXT: readiness is checked there).
    pub fn start_on(opts: BrokerOpts, port: u16) -> Broker {
        let mut b = Broker::unstarted(opts, port);
        b.spawn();
        b
    }

    /// Spawns a broker without waiting for it to serve (for brokers expected to fail).
    pub fn launch(opts: BrokerOpts) -> Broker {
        let mut b = Broker::unstarted(opts, free_port());
        b.spawn_nowait();
        b
    }

    /// Like `launch`, on a given port (for a broker expected to find it taken).
    pub fn launch_on(opts: BrokerOpts, port: u16) -> Broker {
        let mut b = Broker::unstarted(opts, port);
        b.spawn_nowait();
        b
    }

    /// Waits up to `deadline` for the process to exit on its own and returns its status;
    /// panics (killing it, with the log tail) if it is still running then.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("broker not running");
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                eprintln!(
                    "[harness] broker exited by itself after {:?} with {status}",
                    start.elapsed()
                );
                return status;
            }
            if start.elapsed() > deadline {
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGKILL);
                }
                let _ = c.wait();
                panic!(
                    "broker still running {deadline:?} after it should have exited; log:\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn(&mut self) {
        let start = Instant::now();
        self.spawn_nowait();
        self.wait_ready(start);
    }

    fn wait_ready(&mut self, start: Instant) {
        let addr = self.addr();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "[harness] corelog exited during startup with {status}; log:\n{}",
                    self.log_tail(60)
                );
            }
            if api_versions_ok(addr, Duration::from_secs(5)) {
                eprintln!(
                    "[harness] broker ready on {addr} after {:?} (start #{})",
                    start.elapsed(),
                    self.starts
                );
                return;
            }
            if start.elapsed() > READY_DEADLINE {
                panic!(
                    "[harness] broker on {addr} not ready after {:?}; log:\n{}",
                    start.elapsed(),
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// True while the process has not exited.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().unwrap().is_none(),
        }
    }

    /// Panics (with the log tail) if the broker process exited.
    pub fn assert_alive(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait().unwrap()
        {
            panic!("corelog died with {status}; log:\n{}", self.log_tail(80));
        }
        assert!(self.child.is_some(), "broker is not running");
    }

    /// Panics unless the process is alive and a fresh connection gets an ApiVersions answer.
    pub fn assert_serving(&mut self) {
        self.assert_alive();
        let addr = self.addr();
        let start = Instant::now();
        let ok = api_versions_ok(addr, Duration::from_secs(30));
        if !ok {
            self.assert_alive();
            panic!(
                "broker alive but a fresh connection got no ApiVersions answer within {:?}; log:\n{}",
                start.elapsed(),
                self.log_tail(60)
            );
        }
        eprintln!(
            "[harness] broker still serves a fresh connection ({:?})",
            start.elapsed()
        );
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().unwrap().is_none() {
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGKILL);
                }
            }
            let status = c.wait().expect("wait after SIGKILL");
            eprintln!("[harness] broker killed with SIGKILL ({status})");
        }
    }

    /// SIGTERM, then wait (with a deadline) for the process to exit. Returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal`, then waits (with a deadline) for the process to exit. Returns its status.
    pub fn stop_with(&mut self, signal: i32) -> ExitStatus {
        let mut c = self.child.take().expect("broker not running");
        let start = Instant::now();
        if let Some(status) = c.try_wait().unwrap() {
            panic!(
                "broker had already exited with {status}; log:\n{}",
                self.log_tail(60)
            );
        }
        unsafe {
            libc::kill(c.id() as i32, signal);
        }
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                eprintln!(
                    "[harness] broker exited after signal {signal} in {:?} with {status}",
                    start.elapsed()
                );
                return status;
            }
            if start.elapsed() > SHUTDOWN_DEADLINE {
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGKILL);
                }
                let _ = c.wait();
                panic!(
                    "broker did not exit within {:?} of signal {signal}; log:\n{}",
                    SHUTDOWN_DEADLINE,
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again on the same port and data dir (terminating it first if running).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.terminate();
            assert!(status.success(), "clean shutdown failed: {status}");
        }
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A raw-protocol connection to this broker.
    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.addr())
    }
}

impl Broker {
    /// A broker that is not started yet: `opts.cores` cores, Kafka port `port`, a fresh temp
    /// dir for its log (and its data, unless `opts.data_dir` names one).
    fn unstarted(opts: BrokerOpts, port: u16) -> Broker {
        let tmp = tempfile::Builder::new()
            .prefix("corelog-test-")
            .tempdir()
            .expect("tempdir");
        let data_dir = match &opts.data_dir {
            Some(d) => d.clone(),
            None => tmp.path().join("data"),
        };
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        let log_path = tmp.path().join("broker.log");
        Broker {
            child: None,
            port,
            data_dir,
            log_path,
            opts,
            starts: 0,
            _tmp: tmp,
        }
    }

    /// Like `spawn`, without waiting for readiness (cluster members only answer usefully once
    /// a quorum of them runs).
    fn spawn_nowait(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open broker log");
        writeln!(
            log,
            "===== corelog start #{} on port {} =====",
            self.starts, self.port
        )
        .unwrap();
        let log2 = log.try_clone().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corelog"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--cores")
            .arg(self.opts.cores.to_string());
        for (k, v) in &self.opts.sets {
            cmd.arg("--set").arg(format!("{k}={v}"));
        }
        cmd.args(&self.opts.args);
        cmd.envs(self.opts.envs.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log2))
            .stderr(Stdio::from(log));
        eprintln!("[harness] spawning {cmd:?}");
        self.child = Some(cmd.spawn().expect("spawn corelog"));
    }

    /// Panics with the log tail if the process exited.
    fn check_not_exited(&mut self, what: &str) {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait().unwrap()
        {
            self.child = None;
            panic!(
                "[harness] {what}: corelog on port {} exited with {status}; log:\n{}",
                self.port,
                self.log_tail(80)
            );
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take()
            && matches!(c.try_wait(), Ok(None))
        {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- corelog log tail ({}) -----\n{}\n----- end of log -----",
                self.log_path.display(),
                self.log_tail(80)
            );
        }
    }
}

/// One ApiVersions v0 round trip on a fresh connection.
pub fn api_versions_ok(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut c = RawClient::from_stream(stream);
    let corr = match c.send_request(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default()) {
        Ok(corr) => corr,
        Err(_) => return false,
    };
    match c.read_frame() {
        Ok(Some(mut f)) if f.len() >= 6 => {
            let got = f.get_i32();
            let err = f.get_i16();
            got == corr && err == NONE
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The corelog command
// ---------------------------------------------------------------------------------------------

/// Output of one `corelog` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "expected success; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts a failure exit and returns stderr.
    pub fn failed(&self) -> &str {
        assert_ne!(
            self.code, 0,
            "expected failure; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stderr
    }
}

/// Runs `corelog <args>` to completion (it has its own network timeouts), and prints how
/// long it took and what it wrote.
pub fn corelog(args: &[&str]) -> Run {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run corelog");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "[test] corelog {} -> exit {} in {:?}",
        args.join(" "),
        run.code,
        start.elapsed()
    );
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        for line in text.lines() {
            eprintln!("[corelog {name}] {line}");
        }
    }
    run
}
