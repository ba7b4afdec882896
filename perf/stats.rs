//! Throughput / latency accounting, the per-second progress line and the
//! final report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

pub struct Stats {
    pub start: Instant,
    msgs: AtomicU64,
    bytes: AtomicU64,
    failed_msgs: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    interval: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
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

    /// Prints the final report (human readable, or one JSON line).
    pub fn report(&self, mode: &str, elapsed: Duration, json: bool) {
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
        if json {
            let mut s = format!(
                "{{\"mode\":\"{mode}\",\"msgs\":{msgs},\"bytes\":{bytes},\"failed_msgs\":{failed},\"elapsed_s\":{secs:.3},\"msgs_per_s\":{rate:.1},\"mb_per_s\":{mbs:.3},\"latency_us\":"
            );
            match lat {
                Some((p50, p99, p999, max, mean, n)) => s.push_str(&format!(
                    "{{\"count\":{n},\"mean\":{mean:.1},\"p50\":{p50},\"p99\":{p99},\"p999\":{p999},\"max\":{max}}}"
                )),
                None => s.push_str("null"),
            }
            s.push_str(",\"errors\":{");
            let parts: Vec<String> = errors
                .iter()
                .map(|(k, v)| format!("\"{}\":{v}", json_escape(k)))
                .collect();
            s.push_str(&parts.join(","));
            s.push_str("}}");
            println!("{s}");
        } else {
            println!("== corelog-perf {mode} ==");
            println!("messages:   {msgs} ({failed} failed)");
            println!("elapsed:    {secs:.3} s");
            println!("throughput: {rate:.0} msg/s, {mbs:.2} MB/s (MB = 2^20 bytes of values)");
            match lat {
                Some((p50, p99, p999, max, mean, n)) => println!(
                    "latency us: p50 {p50}, p99 {p99}, p99.9 {p999}, max {max}, mean {mean:.0} ({n} samples)"
                ),
                None => println!("latency us: n/a"),
            }
            if errors.is_empty() {
                println!("errors:     none");
            } else {
                println!("errors:");
                for (k, v) in &errors {
                    println!("  {k}: {v}");
                }
            }
        }
    }
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
