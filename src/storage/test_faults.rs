//! Test-only disk fault injection, compiled in but inert: unless the environment variable
//! [`TEST_DISK_FAULTS_ENV`] names a control file, [`check`] is one load of a `OnceLock` and
//! returns `Ok`. With it set, the production file operations (`disk::DmaDisk` and the
//! metadata log's WAL) fail as the control file says, so a test can break one partition's
//! disk on a live broker process.
//!
//! The control file holds lines `<fault> <path fragment>`; an operation on a path containing
//! the fragment fails. Faults: `write-enospc` (writes fail with ENOSPC), `fdatasync-eio`
//! (fdatasync fails with EIO), `mkdir-eio` (directory creation fails with EIO). Each check
//! stats the file and re-reads it when its size or modification time changed, so a fault
//! written by a test applies to the next operation; a missing file injects nothing.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

/// Names the control file; unset in production.
pub const TEST_DISK_FAULTS_ENV: &str = "CORELOG_TEST_DISK_FAULTS";

/// A control file larger than this is ignored (it is a test's few lines).
const MAX_CONTROL_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Write,
    Fdatasync,
    CreateDir,
}

impl FileOp {
    /// The control file's name of the fault and the errno it injects.
    fn fault(self) -> (&'static str, i32) {
        match self {
            FileOp::Write => ("write-enospc", ENOSPC),
            FileOp::Fdatasync => ("fdatasync-eio", EIO),
            FileOp::CreateDir => ("mkdir-eio", EIO),
        }
    }
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

#[derive(Default)]
struct Rules {
    /// The control file's (size, modification time) when `lines` were read.
    version: Option<(u64, SystemTime)>,
    /// (fault name, path fragment)
    lines: Vec<(String, String)>,
}

thread_local! {
    static RULES: RefCell<Rules> = RefCell::default();
}

fn control_file() -> Option<&'static Path> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| std::env::var_os(TEST_DISK_FAULTS_ENV).map(PathBuf::from))
        .as_deref()
}

/// `Err` (the injected fault) if the control file asks `op` on `path` to fail.
pub fn check(op: FileOp, path: &Path) -> io::Result<()> {
    let Some(control) = control_file() else {
        return Ok(());
    };
    let (name, errno) = op.fault();
    let path = path.to_string_lossy();
    let version = std::fs::metadata(control)
        .ok()
        .and_then(|m| Some((m.len(), m.modified().ok()?)));
    let hit = RULES.with_borrow_mut(|rules| {
        if rules.version != version {
            rules.lines = match version {
                Some((len, _)) if len <= MAX_CONTROL_BYTES => read_rules(control),
                _ => Vec::new(),
            };
            rules.version = version;
        }
        rules
            .lines
            .iter()
            .any(|(fault, fragment)| fault == name && path.contains(fragment.as_str()))
    });
    if hit {
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(())
}

fn read_rules(control: &Path) -> Vec<(String, String)> {
    parse(&std::fs::read_to_string(control).unwrap_or_default())
}

fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.trim().split_once(' '))
        .map(|(fault, fragment)| (fault.to_string(), fragment.trim().to_string()))
        .filter(|(_, fragment)| !fragment.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_a_fault_and_a_fragment() {
        let rules = parse("write-enospc /t-0/\n\nfdatasync-eio  cluster-metadata \nbogus\n");
        assert_eq!(
            rules,
            vec![
                ("write-enospc".to_string(), "/t-0/".to_string()),
                ("fdatasync-eio".to_string(), "cluster-metadata".to_string()),
            ]
        );
        let enospc = io::Error::from_raw_os_error(FileOp::Write.fault().1);
        assert_eq!(enospc.kind(), io::ErrorKind::StorageFull);
    }
}
