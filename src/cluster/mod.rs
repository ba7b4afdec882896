//! Cluster metadata: which topics exist, their IDs, partition counts and configs.
//!
//! On this single-node broker the metadata is decided by shard 0 and persisted to one file
//! under the data dir; every shard reads an immutable [`ClusterMetadata`] snapshot that shard
//! 0 broadcasts after each change. The controller quorum replaces the file in a later step.

pub mod topics;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::config::TopicConfig;

/// One topic as every shard sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub config: TopicConfig,
}

/// An immutable snapshot of the cluster's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterMetadata {
    pub cluster_id: String,
    /// Producer ids below this were possibly handed out; the next block starts here.
    pub producer_id_block_end: i64,
    pub topics: BTreeMap<String, TopicMeta>,
}

/// Producer ids are reserved in blocks so the file is written once per block, not per id.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

impl ClusterMetadata {
    pub fn new() -> Self {
        Self {
            cluster_id: Uuid::new_v4().simple().to_string(),
            producer_id_block_end: 0,
            topics: BTreeMap::new(),
        }
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<&TopicMeta> {
        self.topics.values().find(|t| t.id == id)
    }

    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("cluster-metadata")
    }

    /// Reads the metadata file, or starts a new cluster when there is none.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text)
                .map_err(|e| anyhow::anyhow!("corrupt metadata file {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = Self::new();
                fresh.store(data_dir)?;
                Ok(fresh)
            }
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the file atomically (temp file, fsync, rename, fsync of the directory).
    pub fn store(&self, data_dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(data_dir)?;
        let path = Self::path(data_dir);
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(self.render().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(())
    }

    fn render(&self) -> String {
        let mut out = format!(
            "cluster.id {}\nproducer.id.block.end {}\n",
            self.cluster_id, self.producer_id_block_end
        );
        for t in self.topics.values() {
            let configs: Vec<String> = t
                .config
                .overrides
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out += &format!(
                "topic {} {} {} {}\n",
                t.name,
                t.id,
                t.partitions,
                configs.join(",")
            );
        }
        out
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut meta = Self::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["cluster.id", id] => meta.cluster_id = id.to_string(),
                ["producer.id.block.end", n] => {
                    meta.producer_id_block_end = n.parse().map_err(|_| line.to_string())?
                }
                ["topic", name, id, partitions, configs] => {
                    let pairs = configs
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| p.split_once('=').ok_or_else(|| line.to_string()))
                        .collect::<Result<Vec<_>, _>>()?;
                    let topic = TopicMeta {
                        name: name.to_string(),
                        id: id.parse().map_err(|_| line.to_string())?,
                        partitions: partitions.parse().map_err(|_| line.to_string())?,
                        config: TopicConfig::from_pairs(pairs).map_err(|e| e.to_string())?,
                    };
                    meta.topics.insert(topic.name.clone(), topic);
                }
                _ => return Err(format!("unreadable line '{line}'")),
            }
        }
        Ok(meta)
    }
}

impl Default for ClusterMetadata {
    fn default() -> Self {
        Self::new()
    }
}

/// Kafka's rule: 1-249 characters of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = ClusterMetadata::load_or_create(dir.path()).unwrap();
        meta.producer_id_block_end = 2000;
        meta.topics.insert(
            "orders".into(),
            TopicMeta {
                name: "orders".into(),
                id: Uuid::new_v4(),
                partitions: 8,
                config: TopicConfig::from_pairs([("segment.bytes", "65536")]).unwrap(),
            },
        );
        meta.store(dir.path()).unwrap();
        assert_eq!(ClusterMetadata::load_or_create(dir.path()).unwrap(), meta);
    }

    #[test]
    fn topic_names_follow_kafka() {
        assert!(is_valid_topic_name("orders.v1_eu-west"));
        assert!(!is_valid_topic_name(""));
        assert!(!is_valid_topic_name(".."));
        assert!(!is_valid_topic_name("bad/name"));
        assert!(!is_valid_topic_name(&"x".repeat(250)));
        assert!(is_valid_topic_name(&"x".repeat(249)));
    }
}
