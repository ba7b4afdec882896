//! Hardening tests: mutated frames on a live broker's socket (issue 10, "Also"). Valid
//! requests of every served API, mutated (`corelog::protocol::mutate`), are sent for
//! `CORELOG_FUZZ_SOCKET_SECS` (default 10) while an acks=all producer writes; then the
//! broker must be alive, still serve metadata, produce and fetch, and every acknowledged
//! message must be readable.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corelog::protocol::mutate::{corpus, mutate};
use corelog::rng::Rng;

use crate::common::*;

const TOPIC: &str = "acked";
const CHUNK: u64 = 200;

fn fuzz_secs() -> u64 {
    std::env::var("CORELOG_FUZZ_SOCKET_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// Sends mutated frames on short-lived connections until `deadline`; returns how many.
fn send_mutated_frames(addr: SocketAddr, seed: u64, deadline: Instant) -> usize {
    let seeds = corpus("fuzzed");
    let mut rng = Rng::new(seed);
    let mut sent = 0;
    let mut reply = [0u8; 64 << 10];
    while Instant::now() < deadline {
        let Ok(mut stream) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        // A few requests per connection: the broker closes on an undecodable one.
        for _ in 0..1 + rng.index(8) {
            let original = &seeds[rng.index(seeds.len())].bytes;
            let payload = mutate(&mut rng, original, &seeds);
            // Now and then a length prefix that lies about the payload.
            let framed = if rng.index(16) == 0 {
                let mut f = (rng.next_u64() as i32).to_be_bytes().to_vec();
                f.extend_from_slice(&payload);
                f
            } else {
                frame(&payload)
            };
            if stream.write_all(&framed).is_err() {
                break;
            }
            sent += 1;
            if matches!(stream.read(&mut reply), Ok(0)) {
                break;
            }
        }
    }
    sent
}

#[test]
fn mutated_frames_neither_crash_the_broker_nor_lose_acknowledged_messages() {
    let mut broker = Broker::start(BrokerOpts::new());
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, 2);
    let config = producer_config(&bootstrap, "all");
    let seed = 0xF022;
    let mut deliveries = produce_messages(&config, TOPIC, seed, 0..CHUNK);
    // Acknowledged writes go on while the frames arrive.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, config) = (stop.clone(), config.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut next = CHUNK;
            while !stop.load(Ordering::Relaxed) {
                acked.extend(produce_messages(&config, TOPIC, seed, next..next + CHUNK));
                next += CHUNK;
            }
            acked
        })
    };
    let fuzz_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("socket fuzz: seed {fuzz_seed:#x} for {} s", fuzz_secs());
    let deadline = Instant::now() + Duration::from_secs(fuzz_secs());
    let sent = send_mutated_frames(broker.addr(), fuzz_seed, deadline);
    stop.store(true, Ordering::Relaxed);
    deliveries.extend(writer.join().expect("producer thread"));
    eprintln!(
        "socket fuzz: {sent} frames sent, {} messages acknowledged",
        deliveries.len()
    );
    assert!(sent > 100, "only {sent} frames sent");
    broker.assert_alive();
    broker.assert_serving();
    // Still takes writes, and every acknowledged message reads back.
    let next = deliveries.len() as u64;
    deliveries.extend(produce_messages(&config, TOPIC, seed, next..next + CHUNK));
    assert_eq!(
        verify_topic(&bootstrap, TOPIC, 2, seed, &deliveries),
        deliveries.len()
    );
}
