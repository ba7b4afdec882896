//! Throughput / latency accounting, the per-second progress line and the
//! final report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Name of a Kafka error code as the stats report it (`6:NotLeaderOrFollower`).
fn error_name(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(e) => format!("{e:?}"),
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// The brokers' CPU-seconds over a run and the value bytes moved per one of
/// them (GB = 10^9 bytes, as `/proc`-based efficiency figures usually are).
fn broker_efficiency(bytes: u64, cpu_s: f64) -> Option<f64> {
    (cpu_s > 0.0).then(|| bytes as f64 / 1e9 / cpu_s)
}

pub struct Stats {
    pub start: Instant,
    msgs: AtomicU64,
    bytes: AtomicU64,
    failed_msgs: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    interval: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    broker_cpu_s: OnceLock<f64>,
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

impl Stats {
    pub fn new() -> Arc<Stats> {
        Arc::new(Stats {
            start: Instant::now(),
            msgs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            failed_msgs: AtomicU64::new(0),
            hist: Mutex::new(new_hist()),
            interval: Mutex::new(new_hist()),
            errors: Mutex::new(BTreeMap::new()),
            broker_cpu_s: OnceLock::new(),
        })
    }

    /// Microseconds since `start`.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn msgs(&self) -> u64 {
        self.msgs.load(Ordering::Relaxed)
    }

    /// Counts successfully produced/consumed messages without latency.
    pub fn record_ok(&self, msgs: u64, bytes: u64) {
        self.msgs.fetch_add(msgs, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records latencies (µs) of some successful messages.
    pub fn record_latencies(&self, lat_us: impl Iterator<Item = u64> + Clone) {
        {
            let mut h = self.hist.lock().unwrap();
            for l in lat_us.clone() {
                h.saturating_record(l.max(1));
            }
        }
        let mut h = self.interval.lock().unwrap();
        for l in lat_us {
            h.saturating_record(l.max(1));
        }
    }

    /// A Kafka error code seen in a response (one per partition response).
    pub fn kafka_error(&self, code: i16) {
        self.error(format!("{code}:{}", error_name(code)));
    }

    /// A client-side error category ("io", "timeout", "crc", ...).
    pub fn error(&self, what: String) {
        *self.errors.lock().unwrap().entry(what).or_insert(0) += 1;
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn failed_msgs(&self) -> u64 {
        self.failed_msgs.load(Ordering::Relaxed)
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().unwrap().clone()
    }

    pub fn failed(&self, msgs: u64) {
        self.failed_msgs.fetch_add(msgs, Ordering::Relaxed);
    }

    fn error_count(&self) -> u64 {
        self.errors.lock().unwrap().values().sum()
    }

    /// Prints a progress line to stderr every second until `stop`.
    pub fn spawn_progress(self: &Arc<Self>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
        let s = Arc::clone(self);
        std::thread::spawn(move || {
            let mut last_msgs = 0u64;
            let mut last_bytes = 0u64;
            let mut last_t = Instant::now();
            let mut next = s.start + Duration::from_secs(1);
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(50)));
                    continue;
                }
                next += Duration::from_secs(1);
                let msgs = s.msgs.load(Ordering::Relaxed);
                let bytes = s.bytes.load(Ordering::Relaxed);
                let dt = last_t.elapsed().as_secs_f64().max(1e-9);
                last_t = Instant::now();
                let p99 = {
                    let mut h = s.interval.lock().unwrap();
                    let v = if h.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{} us", h.value_at_quantile(0.99))
                    };
                    h.reset();
                    v
                };
                eprintln!(
                    "[{:>4}s] {} msgs, {:.0} msg/s, {:.2} MB/s, p99 {} (last 1s), errors {}",
                    s.start.elapsed().as_secs(),
                    msgs,
                    (msgs - last_msgs) as f64 / dt,
                    (bytes - last_bytes) as f64 / MIB / dt,
                    p99,
                    s.error_count()
                );
                last_msgs = msgs;
                last_bytes = bytes;
            }
        })
    }

    /// The brokers' CPU time over the run (`--broker-pids`).
    pub fn set_broker_cpu_s(&self, secs: f64) {
        let _ = self.broker_cpu_s.set(secs);
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn broker_cpu_s(&self) -> Option<f64> {
        self.broker_cpu_s.get().copied()
    }

    /// Prints the final report (human readable, or one JSON line).
    pub fn report(&self, mode: &str, elapsed: Duration, json: bool) {
        print!("{}", self.render(mode, elapsed, json));
    }

    fn render(&self, mode: &str, elapsed: Duration, json: bool) -> String {
        let msgs = self.msgs.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let failed = self.failed_msgs.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-9);
        let rate = msgs as f64 / secs;
        let mbs = bytes as f64 / MIB / secs;
        let h = self.hist.lock().unwrap();
        let lat = if h.is_empty() {
            None
        } else {
            Some((
                h.value_at_quantile(0.50),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                h.mean(),
                h.len(),
            ))
        };
        let errors = self.errors.lock().unwrap().clone();
        let cpu_s = self.broker_cpu_s();
        let gb_per_cpu_s = cpu_s.and_then(|c| broker_efficiency(bytes, c));
        let mut s = String::new();
        if json {
            let _ = write!(
                s,
                "{{\"mode\":\"{mode}\",\"msgs\":{msgs},\"bytes\":{bytes},\"failed_msgs\":{failed},\"elapsed_s\":{secs:.3},\"msgs_per_s\":{rate:.1},\"mb_per_s\":{mbs:.3},\"latency_us\":"
            );
            match lat {
                Some((p50, p99, p999, max, mean, n)) => s.push_str(&format!(
                    "{{\"count\":{n},\"mean\":{mean:.1},\"p50\":{p50},\"p99\":{p99},\"p999\":{p999},\"max\":{max}}}"
                )),
                None => s.push_str("null"),
            }
            let _ = write!(
                s,
                ",\"broker_cpu_s\":{},\"gb_per_broker_cpu_s\":{}",
                json_number(cpu_s, 2),
                json_number(gb_per_cpu_s, 3)
            );
            s.push_str(",\"errors\":{");
            let parts: Vec<String> = errors
                .iter()
                .map(|(k, v)| format!("\"{}\":{v}", json_escape(k)))
                .collect();
            s.push_str(&parts.join(","));
            s.push_str("}}\n");
            return s;
        }
        let _ = writeln!(s, "== corelog-perf {mode} ==");
        let _ = writeln!(s, "messages:   {msgs} ({failed} failed)");
        let _ = writeln!(s, "elapsed:    {secs:.3} s");
        let _ = writeln!(
            s,
            "throughput: {rate:.0} msg/s, {mbs:.2} MB/s (MB = 2^20 bytes of values)"
        );
        let _ = match lat {
            Some((p50, p99, p999, max, mean, n)) => writeln!(
                s,
                "latency us: p50 {p50}, p99 {p99}, p99.9 {p999}, max {max}, mean {mean:.0} ({n} samples)"
            ),
            None => writeln!(s, "latency us: n/a"),
        };
        if let Some(cpu) = cpu_s {
            let eff = gb_per_cpu_s.map_or("n/a".to_string(), |g| format!("{g:.3}"));
            let _ = writeln!(
                s,
                "broker cpu: {cpu:.2} s, {eff} GB per broker CPU-second (GB = 10^9 bytes of values)"
            );
        }
        if errors.is_empty() {
            let _ = writeln!(s, "errors:     none");
        } else {
            let _ = writeln!(s, "errors:");
            for (k, v) in &errors {
                let _ = writeln!(s, "  {k}: {v}");
            }
        }
        s
    }
}

/// A JSON number with `decimals`, or `null`.
fn json_number(v: Option<f64>, decimals: usize) -> String {
    v.map_or("null".to_string(), |v| format!("{v:.decimals$}"))
}

pub fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_json() {
        assert_eq!(json_escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }

    #[test]
    fn efficiency_is_bytes_per_cpu_second() {
        assert_eq!(broker_efficiency(2_000_000_000, 0.5), Some(4.0));
        assert_eq!(broker_efficiency(1_000, 0.0), None);
        assert_eq!(json_number(Some(1.23456), 3), "1.235");
        assert_eq!(json_number(None, 2), "null");
    }

    #[test]
    fn reports_broker_cpu() {
        let s = Stats::new();
        s.record_ok(1000, 3_000_000_000);
        let json = s.render("produce", Duration::from_secs(2), true);
        assert!(
            json.contains(",\"broker_cpu_s\":null,\"gb_per_broker_cpu_s\":null,"),
            "{json}"
        );
        assert!(
            !s.render("produce", Duration::from_secs(2), false)
                .contains("broker cpu")
        );
        s.set_broker_cpu_s(1.5);
        let json = s.render("produce", Duration::from_secs(2), true);
        assert!(
            json.contains(",\"broker_cpu_s\":1.50,\"gb_per_broker_cpu_s\":2.000,"),
            "{json}"
        );
        let text = s.render("produce", Duration::from_secs(2), false);
        assert!(
            text.contains("broker cpu: 1.50 s, 2.000 GB per broker CPU-second"),
            "{text}"
        );
    }

    #[test]
    fn counts_and_errors() {
        let s = Stats::new();
        s.record_ok(3, 300);
        s.record_latencies([10u64, 20, 30].into_iter());
        s.kafka_error(6);
        s.kafka_error(6);
        s.error("io".into());
        assert_eq!(s.msgs(), 3);
        assert_eq!(s.error_count(), 3);
        let e = s.errors.lock().unwrap();
        assert_eq!(e.get("6:NotLeaderOrFollower"), Some(&2));
    }
}
