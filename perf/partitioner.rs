//! Partitioners: Kafka's default (murmur2 for keyed records, sticky for
//! keyless ones) and a round-robin alternative.

use rand::Rng;

/// Kafka's `Utils.murmur2` (seed 0x9747b28c), returning the signed Java int.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    // Kafka masks every byte with 0xff: bytes are unsigned.
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`.
pub fn to_positive(x: i32) -> i32 {
    x & 0x7fff_ffff
}

/// Partition for a keyed record, exactly as Kafka's default partitioner.
pub fn partition_for_key(key: &[u8], num_partitions: usize) -> usize {
    (to_positive(murmur2(key)) as usize) % num_partitions
}

/// Chooses the partition (an index into the list of partitions in use) for
/// each record.
pub trait Partitioner: Send {
    fn partition(&mut self, key: Option<&[u8]>, num_partitions: usize) -> usize;
    /// Called when the batch of `partition` was sealed (full or lingered).
    fn batch_sealed(&mut self, _partition: usize, _num_partitions: usize) {}
    /// When a record does not fit its partition's open batch, ask again
    /// after sealing (Kafka's "abort on new batch" for sticky partitioning).
    /// False for partitioners that would skip a partition by asking twice
    /// (cf. KAFKA-9965 for round-robin).
    fn repartition_when_full(&self, _key: Option<&[u8]>) -> bool {
        false
    }
}

/// Kafka's default: murmur2 for keyed records, sticky for keyless records
/// (all keyless records go to one partition until its batch is sealed, then
/// a different random partition is picked).
pub struct DefaultPartitioner {
    sticky: Option<usize>,
}

impl DefaultPartitioner {
    pub fn new() -> Self {
        DefaultPartitioner { sticky: None }
    }

    fn pick_new(&mut self, num_partitions: usize) -> usize {
        let mut rng = rand::thread_rng();
        let p = match self.sticky {
            Some(old) if num_partitions > 1 => {
                // Any partition but the previous one.
                let r = rng.gen_range(0..num_partitions - 1);
                if r >= old { r + 1 } else { r }
            }
            _ => rng.gen_range(0..num_partitions),
        };
        self.sticky = Some(p);
        p
    }
}

impl Partitioner for DefaultPartitioner {
    fn partition(&mut self, key: Option<&[u8]>, num_partitions: usize) -> usize {
        match key {
            Some(k) => partition_for_key(k, num_partitions),
            None => match self.sticky {
                Some(p) if p < num_partitions => p,
                _ => self.pick_new(num_partitions),
            },
        }
    }

    fn repartition_when_full(&self, key: Option<&[u8]>) -> bool {
        key.is_none()
    }

    fn batch_sealed(&mut self, partition: usize, num_partitions: usize) {
        if self.sticky == Some(partition) {
            self.pick_new(num_partitions);
        }
    }
}

/// Every record goes to the next partition, keys ignored (like Kafka's
/// `RoundRobinPartitioner`).
pub struct RoundRobinPartitioner {
    next: usize,
}

impl RoundRobinPartitioner {
    pub fn new() -> Self {
        RoundRobinPartitioner { next: 0 }
    }
}

impl Partitioner for RoundRobinPartitioner {
    fn partition(&mut self, _key: Option<&[u8]>, num_partitions: usize) -> usize {
        let p = self.next % num_partitions;
        self.next = self.next.wrapping_add(1);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_utils_test() {
        // Vectors from Apache Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (k, v) in cases {
            assert_eq!(murmur2(k), v, "{}", String::from_utf8_lossy(k));
        }
        assert_eq!(murmur2(b""), 275_646_681);
    }

    #[test]
    fn keyed_partition_masks_sign_bit() {
        // murmur2("21") is negative: masking (not abs) as Kafka does.
        let expected = ((-973_932_308_i32 & 0x7fff_ffff) as usize) % 7;
        assert_eq!(partition_for_key(b"21", 7), expected);
        let mut p = DefaultPartitioner::new();
        for _ in 0..10 {
            assert_eq!(p.partition(Some(b"21"), 7), expected);
        }
    }

    #[test]
    fn sticky_stays_until_batch_sealed() {
        let mut p = DefaultPartitioner::new();
        let first = p.partition(None, 8);
        for _ in 0..100 {
            assert_eq!(p.partition(None, 8), first);
        }
        // Sealing another partition's batch does not switch.
        p.batch_sealed((first + 1) % 8, 8);
        assert_eq!(p.partition(None, 8), first);
        p.batch_sealed(first, 8);
        let second = p.partition(None, 8);
        assert_ne!(second, first);
        assert_eq!(p.partition(None, 8), second);
        // One partition: always 0.
        let mut one = DefaultPartitioner::new();
        assert_eq!(one.partition(None, 1), 0);
        one.batch_sealed(0, 1);
        assert_eq!(one.partition(None, 1), 0);
    }

    #[test]
    fn sticky_visits_every_partition() {
        let mut p = DefaultPartitioner::new();
        let mut seen = [false; 4];
        for _ in 0..200 {
            let x = p.partition(None, 4);
            seen[x] = true;
            p.batch_sealed(x, 4);
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn round_robin_cycles() {
        let mut p = RoundRobinPartitioner::new();
        let got: Vec<usize> = (0..7).map(|_| p.partition(Some(b"k"), 3)).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
    }
}
