//! `corelog dev-cluster`: N local brokers, each a `corelog serve` child process of this
//! binary, on consecutive ports, with one controller quorum. Stops them all on Ctrl-C or
//! SIGTERM; exits non-zero if one of them exits on its own.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

/// How long a broker may take to answer ApiVersions after it is spawned.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long brokers get to exit after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Offset from the base port of the controller quorum ports.
const VOTER_PORT_OFFSET: u16 = 100;

#[derive(Args, Debug, Clone)]
pub struct DevClusterArgs {
    /// Number of brokers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=99))]
    pub brokers: u16,
    /// Broker i (1-based) listens on 127.0.0.1:(base-port + i - 1); its controller quorum
    /// port is base-port + 100 + i - 1.
    #[arg(long, default_value_t = 19092)]
    pub base_port: u16,
    /// Broker i keeps its data in DIR/broker-i and logs to DIR/broker-i.log.
    #[arg(long, value_name = "DIR", default_value = "./dev-cluster")]
    pub data_dir: PathBuf,
    /// Shards (cores) per broker.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// A broker property for every broker (repeatable), as `corelog serve --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Override the `controller.quorum.voters` value given to every broker (default:
    /// `1@127.0.0.1:(base-port+100),2@127.0.0.1:(base-port+101),...`).
    #[arg(long, value_name = "ID@HOST:PORT,...", conflicts_with = "no_voters")]
    pub voters: Option<String>,
    /// Do not pass `controller.quorum.voters` (for brokers that do not know the key).
    #[arg(long)]
    pub no_voters: bool,
    /// Print each broker's command line and exit without starting anything.
    #[arg(long)]
    pub dry_run: bool,
}

impl DevClusterArgs {
    fn port(&self, i: u16) -> Result<u16> {
        self.base_port
            .checked_add(i - 1)
            .context("--base-port too high for this many brokers")
    }

    /// `1@127.0.0.1:P,2@127.0.0.1:P+1,...`
    pub fn voters_value(&self) -> Result<Option<String>> {
        if self.no_voters {
            return Ok(None);
        }
        if let Some(v) = &self.voters {
            return Ok(Some(v.clone()));
        }
        let voters: Result<Vec<String>> = (1..=self.brokers)
            .map(|i| {
                let port = self
                    .port(i)?
                    .checked_add(VOTER_PORT_OFFSET)
                    .context("--base-port too high for the controller quorum ports")?;
                Ok(format!("{i}@127.0.0.1:{port}"))
            })
            .collect();
        Ok(Some(voters?.join(",")))
    }

    /// `127.0.0.1:P,127.0.0.1:P+1,...`
    pub fn bootstrap(&self) -> Result<String> {
        let addrs: Result<Vec<String>> = (1..=self.brokers)
            .map(|i| Ok(format!("127.0.0.1:{}", self.port(i)?)))
            .collect();
        Ok(addrs?.join(","))
    }

    /// Arguments after the binary for broker `i` (1-based).
    pub fn broker_args(&self, i: u16) -> Result<Vec<String>> {
        let dir = self.data_dir.join(format!("broker-{i}"));
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.port(i)?),
            "--data-dir".into(),
            dir.display().to_string(),
            "--cores".into(),
            self.cores.to_string(),
            "--set".into(),
            format!("node.id={i}"),
        ];
        if let Some(v) = self.voters_value()? {
            args.push("--set".into());
            args.push(format!("controller.quorum.voters={v}"));
        }
        for s in &self.sets {
            args.push("--set".into());
            args.push(s.clone());
        }
        Ok(args)
    }
}

struct BrokerProc {
    id: u16,
    addr: String,
    log: PathBuf,
    child: Child,
}

fn log_path(dir: &Path, i: u16) -> PathBuf {
    dir.join(format!("broker-{i}.log"))
}

/// Runs the cluster until a signal (exit 0 after stopping every broker) or until a broker
/// exits on its own (error naming it and its status).
pub fn run(args: &DevClusterArgs) -> Result<()> {
    for s in &args.sets {
        if !s.contains('=') {
            bail!("--set expects KEY=VALUE, got '{s}'");
        }
    }
    let bootstrap = args.bootstrap()?;
    let exe = std::env::current_exe().context("locating the corelog binary")?;
    if args.dry_run {
        println!("bootstrap: {bootstrap}");
        for i in 1..=args.brokers {
            let argv = args.broker_args(i)?;
            println!("broker {i}: {} {}", exe.display(), argv.join(" "));
        }
        return Ok(());
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handler")?;
    }

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut brokers: Vec<BrokerProc> = Vec::new();
    let started = spawn_all(args, &exe, &mut brokers);
    if let Err(e) = started {
        stop_all(&mut brokers);
        return Err(e);
    }

    println!("bootstrap: {bootstrap}");
    for b in &brokers {
        println!(
            "broker {}: pid {} listen {} log {}",
            b.id,
            b.child.id(),
            b.addr,
            b.log.display()
        );
    }
    let _ = std::io::stdout().flush();

    let result = supervise(&mut brokers, &stop);
    stop_all(&mut brokers);
    result
}

fn spawn_all(args: &DevClusterArgs, exe: &Path, brokers: &mut Vec<BrokerProc>) -> Result<()> {
    for i in 1..=args.brokers {
        let dir = args.data_dir.join(format!("broker-{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = log_path(&args.data_dir, i);
        let log_file: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let argv = args.broker_args(i)?;
        let mut cmd = Command::new(exe);
        cmd.args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            // Its own process group: a terminal's Ctrl-C reaches only this supervisor,
            // which then stops the brokers one way.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing. The broker
        // gets SIGTERM if this process dies, so no broker outlives a killed supervisor.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting broker {i}"))?;
        brokers.push(BrokerProc {
            id: i,
            addr: format!("127.0.0.1:{}", args.port(i)?),
            log,
            child,
        });
    }
    wait_ready(brokers)
}

fn wait_ready(brokers: &mut [BrokerProc]) -> Result<()> {
    let start = Instant::now();
    for b in brokers.iter_mut() {
        loop {
            if let Some(status) = b.child.try_wait()? {
                bail!(
                    "broker {} (pid {}) exited during startup with {status}; log {}:\n{}",
                    b.id,
                    b.child.id(),
                    b.log.display(),
                    log_tail(&b.log, 20)
                );
            }
            let answered = crate::client::Conn::connect(&b.addr)
                .and_then(|mut c| crate::client::api_versions(&mut c))
                .is_ok();
            if answered {
                eprintln!(
                    "dev-cluster: broker {} ready on {} after {:?}",
                    b.id,
                    b.addr,
                    start.elapsed()
                );
                break;
            }
            if start.elapsed() > READY_DEADLINE {
                bail!(
                    "broker {} on {} not ready after {:?}; log {}",
                    b.id,
                    b.addr,
                    start.elapsed(),
                    b.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

fn supervise(brokers: &mut [BrokerProc], stop: &AtomicBool) -> Result<()> {
    loop {
        if stop.load(Ordering::Relaxed) {
            eprintln!("dev-cluster: stopping {} broker(s)", brokers.len());
            return Ok(());
        }
        for b in brokers.iter_mut() {
            if let Some(status) = b.child.try_wait()? {
                bail!(
                    "broker {} (pid {}) exited unexpectedly with {}; log {}:\n{}",
                    b.id,
                    b.child.id(),
                    describe_status(status),
                    b.log.display(),
                    log_tail(&b.log, 20)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// SIGTERM every running broker, wait up to STOP_DEADLINE, then SIGKILL the rest.
fn stop_all(brokers: &mut [BrokerProc]) {
    let start = Instant::now();
    for b in brokers.iter_mut() {
        if matches!(b.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet.
            unsafe {
                libc::kill(b.child.id() as i32, libc::SIGTERM);
            }
        }
    }
    for b in brokers.iter_mut() {
        loop {
            match b.child.try_wait() {
                Ok(Some(status)) => {
                    eprintln!(
                        "dev-cluster: broker {} (pid {}) stopped with {} after {:?}",
                        b.id,
                        b.child.id(),
                        describe_status(status),
                        start.elapsed()
                    );
                    break;
                }
                Ok(None) if start.elapsed() < STOP_DEADLINE => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    eprintln!(
                        "dev-cluster: broker {} (pid {}) still running after {:?}: SIGKILL",
                        b.id,
                        b.child.id(),
                        start.elapsed()
                    );
                    let _ = b.child.kill();
                    let _ = b.child.wait();
                    break;
                }
            }
        }
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(brokers: u16) -> DevClusterArgs {
        DevClusterArgs {
            brokers,
            base_port: 19092,
            data_dir: PathBuf::from("/tmp/dc"),
            cores: 1,
            sets: vec!["num.partitions=3".into()],
            voters: None,
            no_voters: false,
            dry_run: false,
        }
    }

    #[test]
    fn broker_command_lines() {
        let a = args(3);
        assert_eq!(
            a.bootstrap().unwrap(),
            "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
        );
        assert_eq!(
            a.broker_args(2).unwrap().join(" "),
            "serve --listen 127.0.0.1:19093 --data-dir /tmp/dc/broker-2 --cores 1 \
             --set node.id=2 \
             --set controller.quorum.voters=1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194 \
             --set num.partitions=3"
        );
        let mut a = args(1);
        a.no_voters = true;
        assert!(!a.broker_args(1).unwrap().join(" ").contains("voters"));
        a.base_port = u16::MAX;
        assert!(a.voters_value().is_ok()); // no voters: no quorum port needed
        a.no_voters = false;
        assert!(a.voters_value().is_err());
    }
}
