//! The clients: idempotent producers as librdkafka runs them (`enable.idempotence`,
//! acks=all). Each producer id numbers its records per partition (sequence 0, 1, ...), and
//! keeps one batch (one record) in flight per partition; a batch that is not answered with
//! success (an error, no answer within the request timeout, a connection closed by a
//! crash) is sent again, the same batch with the same sequence, to the broker that leads
//! the partition then. The brokers' logs decide what is a duplicate.

use std::collections::BTreeMap;

use super::PARTITIONS;
use super::log::Record;

/// Producer ids of the clients.
const PRODUCER_IDS: std::ops::Range<i64> = 1_000..1_008;
/// librdkafka's `retry.backoff.ms`.
const RETRY_BACKOFF_MS: i64 = 100;

/// A produce of one record to a partition, as a broker receives it.
#[derive(Debug, Clone, Copy)]
pub struct ProduceRequest {
    /// Unique per request (a retry is a new request).
    pub id: u64,
    pub partition: i32,
    /// The record (its epoch is the leader's to stamp).
    pub record: Record,
}

/// A broker's answer to a produce.
#[derive(Debug, Clone, Copy)]
pub struct ProduceAnswer {
    pub node: i32,
    pub request: ProduceRequest,
    pub code: i16,
    /// The record's offset (meaningful on success).
    pub offset: i64,
}

/// Where a batch was last sent, and when the client gives up waiting.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub node: i32,
    /// The broker process the connection was to.
    pub incarnation: u64,
    pub request: u64,
    pub deadline: i64,
}

/// The batch a producer has in flight to one partition.
struct InFlight {
    record: Record,
    /// None: to be sent (again) at `retry_at`.
    sent: Option<Sent>,
    retry_at: i64,
    /// Sent before (a send now is a retry).
    tried: bool,
}

#[derive(Default)]
struct Stream {
    next_sequence: i32,
    in_flight: Option<InFlight>,
}

#[derive(Default)]
pub struct Clients {
    /// Per (producer id, partition).
    streams: BTreeMap<(i64, i32), Stream>,
    /// Records produced (new ones, not retries): the next record's id.
    pub produced: u64,
    /// Batches sent again.
    pub retries: u64,
}

impl Clients {
    /// The (producer id, partition) streams with a batch to send now: a new record when
    /// nothing is in flight, else the one in flight when it is due again (its answer was an
    /// error, it timed out, or its connection closed: `alive(node, incarnation)` is false).
    pub fn due(&self, now: i64, alive: impl Fn(i32, u64) -> bool) -> Vec<(i64, i32)> {
        let mut due = Vec::new();
        for producer_id in PRODUCER_IDS {
            for partition in 0..PARTITIONS {
                let ready = self
                    .streams
                    .get(&(producer_id, partition))
                    .and_then(|s| s.in_flight.as_ref())
                    .is_none_or(|f| match &f.sent {
                        None => f.retry_at <= now,
                        Some(s) => s.deadline <= now || !alive(s.node, s.incarnation),
                    });
                if ready {
                    due.push((producer_id, partition));
                }
            }
        }
        due
    }

    /// The batch a stream `due` sends: a new record, or the one in flight again.
    pub fn next_batch(&mut self, producer_id: i64, partition: i32, now: i64) -> Record {
        let stream = self.streams.entry((producer_id, partition)).or_default();
        if let Some(f) = &mut stream.in_flight {
            f.sent = None;
            if f.tried {
                self.retries += 1;
            }
            return f.record;
        }
        self.produced += 1;
        let record = Record {
            epoch: -1,
            id: self.produced,
            producer_id,
            sequence: stream.next_sequence,
        };
        stream.in_flight = Some(InFlight {
            record,
            sent: None,
            retry_at: now,
            tried: false,
        });
        record
    }

    /// The batch due was sent (`Some`), or found no leader to go to (`None`).
    pub fn sent(&mut self, record: &Record, partition: i32, sent: Option<Sent>, now: i64) {
        if let Some(f) = self.in_flight(record, partition) {
            f.tried |= sent.is_some();
            f.sent = sent;
            f.retry_at = now + RETRY_BACKOFF_MS;
        }
    }

    /// A broker answered: success completes the batch (the next record gets the next
    /// sequence); an error answer to the latest send makes it due again after the backoff.
    pub fn on_answer(&mut self, answer: &ProduceAnswer, now: i64) {
        let (record, partition) = (answer.request.record, answer.request.partition);
        if answer.code == 0 {
            if let Some(stream) = self.streams.get_mut(&(record.producer_id, partition))
                && stream
                    .in_flight
                    .as_ref()
                    .is_some_and(|f| f.record.id == record.id)
            {
                stream.in_flight = None;
                stream.next_sequence += 1;
            }
            return;
        }
        if let Some(f) = self.in_flight(&record, partition)
            && f.sent.is_some_and(|s| s.request == answer.request.id)
        {
            f.sent = None;
            f.retry_at = now + RETRY_BACKOFF_MS;
        }
    }

    fn in_flight(&mut self, record: &Record, partition: i32) -> Option<&mut InFlight> {
        self.streams
            .get_mut(&(record.producer_id, partition))?
            .in_flight
            .as_mut()
            .filter(|f| f.record.id == record.id)
    }
}
