use super::*;
use crate::config::BrokerConfig;
use crate::runtime::block_on;

fn settings(sets: &[(&str, &str)]) -> BrokerSettings {
    let mut config = BrokerConfig::new("127.0.0.1:9092".parse().unwrap(), "data".into());
    for (key, value) in sets {
        config.set(key, value).unwrap();
    }
    config.settings()
}

#[test]
fn the_budget_is_the_sum_of_its_parts() {
    let s = settings(&[
        ("queued.max.request.bytes", "1000000"),
        ("corelog.fetch.response.bytes.per.shard", "60000000"),
        ("corelog.tail.cache.bytes.per.shard", "3000000"),
        ("max.connections", "9"),
        ("corelog.max.partitions.per.shard", "10"),
    ]);
    // Shard 0 of 2 gets 5 of the 9 connections.
    let budget = ShardMemoryBudget::of(&s, 0, 2);
    let expected = 1_000_000
        + FRAME_STARTS_RESERVED_BYTES
        + 60_000_000
        + 3_000_000
        + (5 + INTER_BROKER_CONNECTIONS_RESERVED) * CONNECTION_FIXED_BYTES
        + 10 * PARTITION_FIXED_BYTES
        + SHARD_FIXED_BYTES
        + crate::protocol::buffer_pool::POOL_MAX_BYTES
        + crate::storage::STAGING_POOL_MAX_BYTES;
    assert_eq!(budget.total(), expected as u64);
    let checked = check(&s, 2, None).expect("fits");
    assert_eq!(checked.per_shard, budget);
    assert!(checked.over_machine.is_none());
}

#[test]
fn a_share_of_zero_connections_is_refused() {
    let s = settings(&[("max.connections", "3")]);
    assert!(check(&s, 3, None).is_ok());
    let err = check(&s, 4, None).unwrap_err();
    assert!(matches!(
        err,
        BudgetError::ShareOfZero {
            property: "max.connections",
            value: 3,
            shards: 4
        }
    ));
    let s = settings(&[("max.connections.per.ip", "1")]);
    let err = check(&s, 2, None).unwrap_err().to_string();
    assert!(err.contains("max.connections.per.ip (1)"), "{err}");
}

#[test]
fn fetch_responses_must_hold_a_full_fetch() {
    let s = settings(&[
        ("fetch.max.bytes", "2000000"),
        ("corelog.fetch.response.bytes.per.shard", "1999999"),
    ]);
    assert_eq!(
        check(&s, 1, None).err(),
        Some(BudgetError::FetchResponsesBelowFetchMax {
            budget: 1_999_999,
            fetch_max: 2_000_000
        })
    );
}

#[test]
fn one_shard_over_the_machine_memory_is_refused_all_shards_over_it_warned() {
    let s = settings(&[]);
    let one_shard = ShardMemoryBudget::of(&s, 0, 1).total();
    let fits = check(&s, 1, Some(one_shard)).expect("one shard fits");
    assert!(fits.over_machine.is_none());
    // Two shards of the default budget on a machine that holds one: started, with a warning.
    let warned = check(&s, 2, Some(one_shard)).expect("started with a warning");
    let warning = warned.over_machine.expect("a warning").to_string();
    assert!(warning.contains("more than this machine's"), "{warning}");
    let huge = settings(&[("queued.max.request.bytes", &(1u64 << 40).to_string())]);
    let err = check(&huge, 1, Some(64 << 30)).expect_err("one shard cannot fit");
    assert!(
        err.to_string().contains("more than this machine's"),
        "{err}"
    );
    assert!(machine_memory().is_some_and(|m| m > 0));
}

#[test]
fn response_memory_waits_shrinks_and_grows() {
    block_on(async {
        let pool = ResponseMemory::new(100);
        // A reservation never asks for more than the whole budget.
        let mut big = pool.take(1_000).await.unwrap();
        assert_eq!(pool.free.available(), 0);
        big.resize(30).await.unwrap();
        assert_eq!(pool.free.available(), 70);
        let mut other = pool.take(70).await.unwrap();
        // Growing past what is free waits until the other holder gives memory back.
        let grow = async {
            big.resize(60).await.unwrap();
            pool.free.available()
        };
        let release = async {
            other.resize(40).await.unwrap();
        };
        let (available, ()) = futures::join!(grow, release);
        assert_eq!(available, 0);
        drop(other);
        drop(big);
        assert_eq!(pool.free.available(), 100);
    });
}
