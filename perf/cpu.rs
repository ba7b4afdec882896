//! The brokers' CPU time over a run (`--broker-pids`), read from
//! `/proc/PID/stat`: on a shared machine the CPU-seconds a broker spends per
//! byte are stable where its absolute speed is not.

use anyhow::{Context, Result, bail};

/// utime + stime (fields 14 and 15 of `proc(5)`), in clock ticks. The comm
/// field (2) is in parentheses and may itself contain spaces and `)`, so the
/// fields are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After comm: state (3), ppid (4), ... utime (14), stime (15).
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

fn ticks_of(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .with_context(|| format!("--broker-pids: cannot read {path}"))?;
    match parse_stat_ticks(&stat) {
        Some(t) => Ok(t),
        None => bail!("--broker-pids: cannot parse {path}"),
    }
}

fn clock_ticks_per_second() -> Result<u64> {
    // SAFETY: sysconf only reads a constant of the C library; no pointers.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if tck <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(tck as u64)
}

/// The brokers' summed CPU ticks at the start of a run.
pub struct BrokerCpu {
    pids: Vec<u32>,
    start_ticks: u64,
    ticks_per_s: u64,
}

impl BrokerCpu {
    /// Samples every PID now; `None` when no PIDs were given.
    pub fn start(pids: &[u32]) -> Result<Option<BrokerCpu>> {
        if pids.is_empty() {
            return Ok(None);
        }
        Ok(Some(BrokerCpu {
            pids: pids.to_vec(),
            start_ticks: sum_ticks(pids)?,
            ticks_per_s: clock_ticks_per_second()?,
        }))
    }

    /// CPU-seconds the brokers spent since `start`. An error if one of them
    /// exited: its time would be lost from the sum.
    pub fn seconds_since_start(&self) -> Result<f64> {
        let ticks = sum_ticks(&self.pids)?.saturating_sub(self.start_ticks);
        Ok(ticks as f64 / self.ticks_per_s as f64)
    }
}

/// The brokers' CPU-seconds for the report; a failed reading is said on
/// stderr and leaves the figure out rather than losing the whole report.
pub fn report_seconds(cpu: Option<&BrokerCpu>) -> Option<f64> {
    match cpu?.seconds_since_start() {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("broker CPU time not reported: {e:#}");
            None
        }
    }
}

fn sum_ticks(pids: &[u32]) -> Result<u64> {
    pids.iter()
        .try_fold(0u64, |sum, &pid| Ok(sum.saturating_add(ticks_of(pid)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_plus_stime() {
        let stat =
            "4242 (corelog) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(325));
    }

    #[test]
    fn comm_with_spaces_and_parentheses() {
        // A process may name itself anything up to 15 bytes, `)` included.
        let stat = "77 (a) b (c) d) R 1 77 77 0 -1 0 0 0 0 0 7 8 0 0 20 0 1 0 5 0 0\n";
        assert_eq!(parse_stat_ticks(stat), Some(15));
    }

    #[test]
    fn refuses_truncated_or_garbled_lines() {
        assert_eq!(parse_stat_ticks(""), None);
        assert_eq!(parse_stat_ticks("1 (x"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 7"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 7 z 0"), None);
        assert_eq!(
            parse_stat_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 18446744073709551615 1 0"),
            None
        );
    }

    #[test]
    fn reads_this_process() {
        // Busy until the kernel has charged this process a tick: a parser
        // reading the wrong fields would see no change and time out.
        let cpu = BrokerCpu::start(&[std::process::id()]).unwrap().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 0u64;
        let mut secs = 0.0;
        while secs == 0.0 && std::time::Instant::now() < deadline {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            secs = cpu.seconds_since_start().unwrap();
        }
        assert!(secs > 0.0 && secs < 120.0, "{secs}");
        assert!(BrokerCpu::start(&[]).unwrap().is_none());
    }

    #[test]
    fn a_missing_pid_is_an_error() {
        // PIDs are at most 2^22 on Linux.
        assert!(BrokerCpu::start(&[u32::MAX]).is_err());
    }
}
