//! What one shard's connections may hold: how many are open (in all and per client
//! address), the memory of the requests being read or handled, and how long a connection
//! may stay idle.
//!
//! Kafka's `max.connections` and `max.connections.per.ip` are broker-wide: each shard gets
//! an even share of them ([`shard_share`]), so the broker's total holds without a counter
//! shared between shards. A request's memory is taken as its frame buffer grows, before the
//! bytes are read: the first [`INITIAL_BUFFER_BYTES`] of a frame from a reserve of
//! [`FRAME_STARTS_RESERVED`] frame starts, the rest from `queued.max.request.bytes`. When
//! either is spent, connections stop reading their sockets (back-pressure: no request is
//! dropped or failed) until handled requests give memory back. The reserve keeps small
//! requests (metadata, heartbeats, most fetches) flowing while large unfinished frames hold
//! the rest.
//!
//! Broker-to-broker connections (replica fetchers) are exempt from the connection limits,
//! as Kafka exempts its inter-broker listener: a connection over a limit is still admitted
//! into a small reserve ([`INTER_BROKER_CONNECTIONS_RESERVED`]) if its first request, within
//! [`RESERVED_IDLE_MAX`], is an ApiVersions naming a registered broker of this cluster; any
//! other is closed. Without authentication this keeps replication going while clients
//! exhaust the limits; it does not stop a peer that forges a registered broker's identity.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{Either, select};
use futures::{AsyncRead, AsyncReadExt};

use crate::config::BrokerSettings;
use crate::protocol::FrameError;
use crate::protocol::frame::{FrameAssembler, INITIAL_BUFFER_BYTES};
use crate::runtime::{Closed, Permit, Semaphore, sleep};

/// Frames of one shard that may be started (their first [`INITIAL_BUFFER_BYTES`] read) at
/// once, besides what `queued.max.request.bytes` holds.
pub const FRAME_STARTS_RESERVED: usize = 256;
/// Memory of the frame-start reserve of one shard.
pub const FRAME_STARTS_RESERVED_BYTES: usize = FRAME_STARTS_RESERVED * INITIAL_BUFFER_BYTES;
// A shard's reserve stays a small part of its memory.
const _: () = assert!(FRAME_STARTS_RESERVED_BYTES <= 32 << 20);
/// Connections of one shard admitted over its limits, each until it shows it is another
/// broker of the cluster. A 3-broker cluster's followers need one per peer shard at most.
pub const INTER_BROKER_CONNECTIONS_RESERVED: usize = 64;
/// How long a connection in the inter-broker reserve may stay silent: the deadline for its
/// first request, and its idle limit after.
pub const RESERVED_IDLE_MAX: Duration = Duration::from_secs(10);

/// `total` split over `shards` as evenly as possible: shard `shard`'s part. The parts add up
/// to `total`.
pub fn shard_share(total: usize, shard: usize, shards: usize) -> usize {
    assert!(shard < shards, "shard {shard} of {shards}");
    total / shards + usize::from(shard < total % shards)
}

/// Why a new connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The shard's share of `max.connections` is open.
    TooManyConnections,
    /// The shard's share of `max.connections.per.ip` is open from this address.
    TooManyFromAddress,
}

/// One shard's limits and what its connections hold of them.
pub struct ConnectionLimits {
    connections_max: usize,
    connections_per_ip_max: usize,
    idle_max: Duration,
    open: Cell<usize>,
    /// Open connections by client address; at most `connections_max` entries.
    open_by_ip: RefCell<HashMap<IpAddr, usize>>,
    /// Connections admitted into the inter-broker reserve.
    reserved_open: Cell<usize>,
    /// Connections refused so far (logged at powers of two, not one line each).
    refused: Cell<u64>,
    frame_starts: Semaphore,
    queued_bytes: Semaphore,
}

/// An admitted connection's place in the counts, given back when dropped.
pub struct ConnectionSlot {
    limits: Rc<ConnectionLimits>,
    ip: IpAddr,
    /// The limit this connection is over, if it was admitted into the inter-broker reserve.
    over: Option<Refusal>,
}

impl ConnectionLimits {
    /// Shard `shard`'s share of the broker's limits.
    pub fn new(settings: &BrokerSettings, shard: usize, shards: usize) -> ConnectionLimits {
        let connections_max = shard_share(settings.max_connections, shard, shards);
        ConnectionLimits {
            connections_max,
            connections_per_ip_max: shard_share(settings.max_connections_per_ip, shard, shards),
            idle_max: settings.connections_max_idle,
            open: Cell::new(0),
            open_by_ip: RefCell::new(HashMap::new()),
            reserved_open: Cell::new(0),
            refused: Cell::new(0),
            frame_starts: Semaphore::new(FRAME_STARTS_RESERVED_BYTES as u64),
            queued_bytes: Semaphore::new(settings.queued_max_request_bytes_per_shard as u64),
        }
    }

    /// Counts a new connection from `ip`. Over the shard's share of a limit, it is admitted
    /// into the inter-broker reserve ([`ConnectionSlot::over_limit`]) while that has room.
    pub fn admit(self: &Rc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let mut by_ip = self.open_by_ip.borrow_mut();
        let from_ip = by_ip.get(&ip).copied().unwrap_or(0);
        let over = if self.open.get() >= self.connections_max {
            Some(Refusal::TooManyConnections)
        } else if from_ip >= self.connections_per_ip_max {
            Some(Refusal::TooManyFromAddress)
        } else {
            None
        };
        match over {
            None => {
                by_ip.insert(ip, from_ip + 1);
                self.open.set(self.open.get() + 1);
            }
            Some(_) if self.reserved_open.get() < INTER_BROKER_CONNECTIONS_RESERVED => {
                self.reserved_open.set(self.reserved_open.get() + 1);
            }
            Some(refusal) => {
                self.log_refusal(refusal, ip);
                return Err(refusal);
            }
        }
        Ok(ConnectionSlot {
            limits: self.clone(),
            ip,
            over,
        })
    }

    /// Counts a refused connection (logged at powers of two, not one line each).
    pub fn log_refusal(&self, refusal: Refusal, ip: IpAddr) {
        let refused = self.refused.get() + 1;
        self.refused.set(refused);
        if refused.is_power_of_two() {
            tracing::info!(
                ?refusal,
                %ip,
                refused,
                max_connections_on_shard = self.connections_max,
                max_per_ip_on_shard = self.connections_per_ip_max,
                "closing new connections at accept"
            );
        }
    }

    /// How long `slot`'s connection may stay idle.
    pub fn idle_max(&self, slot: &ConnectionSlot) -> Duration {
        match slot.over {
            Some(_) => self.idle_max.min(RESERVED_IDLE_MAX),
            None => self.idle_max,
        }
    }

    /// Takes what a frame buffer growing from `held` to `wanted` bytes needs, waiting until
    /// the shard has it.
    async fn take(&self, held: usize, wanted: usize) -> Result<Vec<Permit<'_>>, Closed> {
        let from_starts = wanted.min(INITIAL_BUFFER_BYTES) - held.min(INITIAL_BUFFER_BYTES);
        let from_queued =
            wanted.saturating_sub(INITIAL_BUFFER_BYTES) - held.saturating_sub(INITIAL_BUFFER_BYTES);
        let mut permits = Vec::with_capacity(2);
        for (semaphore, units) in [
            (&self.frame_starts, from_starts),
            (&self.queued_bytes, from_queued),
        ] {
            if units > 0 {
                permits.push(semaphore.acquire_permit(units as u64).await?);
            }
        }
        Ok(permits)
    }
}

impl ConnectionSlot {
    /// The limit this connection is over when it was admitted into the inter-broker
    /// reserve: it must name a registered broker in its first request.
    pub fn over_limit(&self) -> Option<Refusal> {
        self.over
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let limits = &self.limits;
        if self.over.is_some() {
            limits.reserved_open.set(limits.reserved_open.get() - 1);
            return;
        }
        limits.open.set(limits.open.get() - 1);
        let mut by_ip = limits.open_by_ip.borrow_mut();
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// When a connection last read or wrote, and how many of its requests are unanswered:
/// shared by its reader and its writer.
pub struct Activity {
    last: Cell<Instant>,
    in_flight: Cell<usize>,
}

impl Activity {
    pub fn new() -> Rc<Activity> {
        Rc::new(Activity {
            last: Cell::new(Instant::now()),
            in_flight: Cell::new(0),
        })
    }

    pub fn touched(&self) {
        self.last.set(Instant::now());
    }

    pub fn request_started(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    pub fn reply_done(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        self.touched();
    }

    /// How long until the connection is idle for `idle_max` (all of it while a request is
    /// unanswered); zero once it is.
    fn time_left(&self, idle_max: Duration) -> Duration {
        if self.in_flight.get() > 0 {
            return idle_max;
        }
        idle_max.saturating_sub(self.last.get().elapsed())
    }
}

/// Resolves once the connection has been idle for `idle_max` (Kafka's
/// `connections.max.idle.ms`): neither read nor written, no request unanswered. Run as the
/// connection's own task; one timer per idle period, none per read.
pub async fn watch_idle(activity: Rc<Activity>, idle_max: Duration, idle: oneshot::Sender<()>) {
    loop {
        let left = activity.time_left(idle_max);
        if left.is_zero() {
            let _ = idle.send(());
            return;
        }
        sleep(left).await;
    }
}

/// Memory held by one request, given back to the shard when dropped (after the request
/// was handled).
pub struct RequestMemory<'a> {
    _permits: Vec<Permit<'a>>,
}

/// Why no request was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("idle for longer than connections.max.idle.ms")]
    Idle,
    #[error("the shard stopped granting request memory")]
    MemoryClosed,
}

/// Reads one request frame of at most `max_frame` bytes, taking its memory from `limits` as
/// the buffer grows. `Ok(None)`: the stream ended between frames.
pub async fn read_request<'a, R: AsyncRead + Unpin>(
    limits: &'a ConnectionLimits,
    activity: &Activity,
    idle: &mut oneshot::Receiver<()>,
    reader: &mut R,
    max_frame: usize,
) -> Result<Option<(Bytes, RequestMemory<'a>)>, ReadError> {
    let mut assembler = FrameAssembler::new(max_frame);
    let mut permits = Vec::new();
    let mut held = 0;
    loop {
        let wanted = assembler.next_buffer_bytes();
        if wanted > held {
            let more = unless_idle(idle, limits.take(held, wanted)).await?;
            permits.extend(more.map_err(|Closed| ReadError::MemoryClosed)?);
            held = wanted;
        }
        let read = unless_idle(idle, reader.read(assembler.spare())).await?;
        if matches!(read, Ok(n) if n > 0) {
            activity.touched();
        }
        if let ControlFlow::Break(outcome) = assembler.advance(read) {
            let memory = RequestMemory { _permits: permits };
            return Ok(outcome?.map(|frame| (frame, memory)));
        }
    }
}

/// `work`, unless the connection turns idle first.
async fn unless_idle<F: Future>(
    idle: &mut oneshot::Receiver<()>,
    work: F,
) -> Result<F::Output, ReadError> {
    match select(pin!(work), idle).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right(_) => Err(ReadError::Idle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_broker_wide_limit() {
        for (total, shards) in [(1, 1), (10, 3), (2, 4), (10_000, 7), (5, 5)] {
            let shares: Vec<usize> = (0..shards).map(|s| shard_share(total, s, shards)).collect();
            assert_eq!(shares.iter().sum::<usize>(), total, "{total} over {shards}");
            let (min, max) = (shares.iter().min(), shares.iter().max());
            assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{shares:?}");
        }
    }

    fn settings(max_connections: usize, per_ip: usize) -> BrokerSettings {
        let mut config =
            crate::config::BrokerConfig::new("127.0.0.1:9092".parse().unwrap(), "data".into());
        config
            .set("max.connections", &max_connections.to_string())
            .unwrap();
        config
            .set("max.connections.per.ip", &per_ip.to_string())
            .unwrap();
        config.settings()
    }

    #[test]
    fn connections_over_the_shard_share_go_to_the_reserve_and_slots_come_back() {
        // Shard 0 of 2: 3 of the 6 connections, 1 of the 2 per address.
        let limits = Rc::new(ConnectionLimits::new(&settings(6, 2), 0, 2));
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let first = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(first.over_limit(), None);
        let again = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(again.over_limit(), Some(Refusal::TooManyFromAddress));
        let _b = limits.admit(ip("10.0.0.2")).unwrap();
        let _c = limits.admit(ip("10.0.0.3")).unwrap();
        let over: Vec<ConnectionSlot> = (1..INTER_BROKER_CONNECTIONS_RESERVED)
            .map(|_| limits.admit(ip("10.0.0.4")).unwrap())
            .collect();
        assert!(
            over.iter()
                .all(|s| s.over_limit() == Some(Refusal::TooManyConnections))
        );
        // The reserve is full: refused at accept.
        assert_eq!(
            limits.admit(ip("10.0.0.4")).err(),
            Some(Refusal::TooManyConnections)
        );
        drop(again);
        assert!(
            limits
                .admit(ip("10.0.0.4"))
                .is_ok_and(|s| s.over_limit().is_some())
        );
        drop(first);
        assert!(
            limits
                .admit(ip("10.0.0.1"))
                .is_ok_and(|s| s.over_limit().is_none())
        );
        assert_eq!(
            limits.open_by_ip.borrow().len(),
            2,
            "a closed address is forgotten"
        );
        assert_eq!(limits.idle_max(&over[0]), RESERVED_IDLE_MAX);
    }
}
