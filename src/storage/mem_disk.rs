//! [`MemDisk`]: a deterministic in-memory [`Disk`] for tests and simulations. Every
//! operation completes at once (its future is ready: no runtime needed, drive it with
//! `now_or_never` or `block_on`); nothing reads a clock or a random source.
//!
//! Each file keeps two versions of its bytes: what was last fdatasync'ed and what was
//! written since (writes, truncations). [`MemDisk::crash`] throws away every unsynced
//! version, as a power loss would, and invalidates the handles opened before it (their
//! operations fail, so a log that outlived the crash cannot write into the recovered
//! files). File names are directory entries: a file created, renamed or removed is so
//! after a crash only if its directory was synced since ([`Disk::sync_dir`]), as on a
//! POSIX file system; a crash brings back the names of the last sync, pointing at the same
//! files (a rename not synced leaves the old name). Directories themselves (create, remove
//! a whole tree) are durable at once.
//!
//! Writes must be aligned like O_DIRECT ones (positions and lengths multiples of
//! [`ALIGNMENT`]), else they fail with `InvalidInput`, as the kernel would refuse them.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{LocalBoxFuture, ready};

use super::disk::{Disk, DiskFile, IoBuffer, IoFuture, OpenMode, ReadBuf};
use super::env::Clock;

/// The O_DIRECT alignment the simulated device asks for.
pub const ALIGNMENT: u64 = 512;

#[derive(Debug, Default)]
struct FileBytes {
    synced: Vec<u8>,
    current: Vec<u8>,
}

type SharedBytes = Rc<RefCell<FileBytes>>;

#[derive(Default)]
struct Tree {
    dirs: BTreeSet<PathBuf>,
    /// The names as the running system sees them.
    files: BTreeMap<PathBuf, SharedBytes>,
    /// The names as of each directory's last sync: what a crash leaves.
    durable_files: BTreeMap<PathBuf, SharedBytes>,
}

/// The simulated disk; clones share it (a log opened again after a crash sees the same
/// files).
#[derive(Clone, Default)]
pub struct MemDisk {
    tree: Rc<RefCell<Tree>>,
    /// Bumped by every crash; handles of an older generation are dead.
    generation: Rc<Cell<u64>>,
    /// While set, every fdatasync fails with EIO (and syncs nothing).
    failing_syncs: Rc<Cell<bool>>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{path:?} not found"))
}

impl MemDisk {
    pub fn new() -> Self {
        MemDisk::default()
    }

    /// A power loss: the file names go back to those of the last directory syncs, every
    /// file to its last fdatasync'ed bytes; handles opened before fail from now on.
    pub fn crash(&self) {
        let mut tree = self.tree.borrow_mut();
        tree.files = tree.durable_files.clone();
        for file in tree.files.values() {
            let mut f = file.borrow_mut();
            f.current = f.synced.clone();
        }
        self.generation.set(self.generation.get() + 1);
    }

    /// From now on every fdatasync fails (`true`) or works again (`false`).
    pub fn fail_fdatasyncs(&self, fail: bool) {
        self.failing_syncs.set(fail);
    }

    /// The current (maybe unsynced) bytes of a file.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let tree = self.tree.borrow();
        Some(tree.files.get(path)?.borrow().current.clone())
    }

    /// The fdatasync'ed bytes of a file: what a crash now would keep.
    pub fn synced_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let tree = self.tree.borrow();
        Some(tree.files.get(path)?.borrow().synced.clone())
    }

    fn open_now(&self, path: &Path, mode: OpenMode) -> io::Result<Rc<dyn DiskFile>> {
        let mut tree = self.tree.borrow_mut();
        let parent = path.parent().unwrap_or(Path::new(""));
        if !tree.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        let bytes = match (tree.files.get(path), mode) {
            (Some(bytes), _) => bytes.clone(),
            (None, OpenMode::ReadOnly) => return Err(not_found(path)),
            (None, _) => {
                let bytes = SharedBytes::default();
                tree.files.insert(path.to_path_buf(), bytes.clone());
                bytes
            }
        };
        if mode == OpenMode::Replace {
            bytes.borrow_mut().current.clear();
        }
        Ok(Rc::new(MemFile {
            bytes,
            generation: self.generation.get(),
            disk_generation: self.generation.clone(),
            failing_syncs: self.failing_syncs.clone(),
        }))
    }
}

impl Disk for MemDisk {
    fn create_dir_all<'a>(&'a self, dir: &'a Path) -> IoFuture<'a, ()> {
        let mut tree = self.tree.borrow_mut();
        for d in dir.ancestors() {
            tree.dirs.insert(d.to_path_buf());
        }
        ready(Ok(())).boxed_local()
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let tree = self.tree.borrow();
        if !tree.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let children = tree.files.keys().chain(tree.dirs.iter());
        Ok(children
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| Some(p.file_name()?.to_str()?.to_string()))
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let tree = self.tree.borrow();
        tree.files.contains_key(path) || tree.dirs.contains(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        match self.tree.borrow_mut().files.remove(path) {
            Some(_) => Ok(()),
            None => Err(not_found(path)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut tree = self.tree.borrow_mut();
        let bytes = tree.files.remove(from).ok_or_else(|| not_found(from))?;
        tree.files.insert(to.to_path_buf(), bytes);
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut tree = self.tree.borrow_mut();
        if !tree.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        tree.files.retain(|p, _| !p.starts_with(dir));
        tree.durable_files.retain(|p, _| !p.starts_with(dir));
        tree.dirs.retain(|p| !p.starts_with(dir));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut tree = self.tree.borrow_mut();
        if !tree.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let Tree {
            files,
            durable_files,
            ..
        } = &mut *tree;
        durable_files.retain(|p, _| p.parent() != Some(dir));
        let entries = files.iter().filter(|(p, _)| p.parent() == Some(dir));
        durable_files.extend(entries.map(|(p, b)| (p.clone(), b.clone())));
        Ok(())
    }

    fn open<'a>(&'a self, path: &'a Path, mode: OpenMode) -> IoFuture<'a, Rc<dyn DiskFile>> {
        ready(self.open_now(path, mode)).boxed_local()
    }
}

/// An open file of a [`MemDisk`].
struct MemFile {
    bytes: SharedBytes,
    generation: u64,
    disk_generation: Rc<Cell<u64>>,
    failing_syncs: Rc<Cell<bool>>,
}

impl MemFile {
    /// Runs `op` on the file's bytes unless a crash happened since the file was opened.
    fn with<T: 'static>(
        &self,
        op: impl FnOnce(&mut FileBytes) -> io::Result<T>,
    ) -> IoFuture<'static, T> {
        let result = if self.generation == self.disk_generation.get() {
            op(&mut self.bytes.borrow_mut())
        } else {
            Err(io::Error::other("file handle opened before a crash"))
        };
        ready(result).boxed_local()
    }
}

fn write_bytes(f: &mut FileBytes, data: &[u8], pos: u64) -> io::Result<usize> {
    if !pos.is_multiple_of(ALIGNMENT) || !(data.len() as u64).is_multiple_of(ALIGNMENT) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unaligned write of {} bytes at {pos}", data.len()),
        ));
    }
    let start = usize::try_from(pos).map_err(io::Error::other)?;
    let end = start + data.len();
    if f.current.len() < end {
        f.current.resize(end, 0);
    }
    f.current[start..end].copy_from_slice(data);
    Ok(data.len())
}

impl DiskFile for MemFile {
    fn alignment(&self) -> u64 {
        ALIGNMENT
    }

    fn alloc_buffer(&self, len: usize) -> IoBuffer {
        IoBuffer::heap(len)
    }

    fn write_at(&self, buf: IoBuffer, pos: u64) -> IoFuture<'_, usize> {
        self.with(|f| write_bytes(f, buf.as_bytes(), pos))
    }

    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, ReadBuf> {
        self.with(|f| {
            let start = usize::try_from(pos).map_or(f.current.len(), |p| p.min(f.current.len()));
            let end = start.saturating_add(len).min(f.current.len());
            Ok(ReadBuf::heap(f.current[start..end].to_vec()))
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        let fail = self.failing_syncs.get();
        self.with(move |f| {
            if fail {
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
            f.synced = f.current.clone();
            Ok(())
        })
    }

    fn truncate(&self, size: u64) -> IoFuture<'_, ()> {
        self.with(|f| {
            f.current
                .resize(usize::try_from(size).map_err(io::Error::other)?, 0);
            Ok(())
        })
    }

    fn size(&self) -> IoFuture<'_, u64> {
        self.with(|f| Ok(f.current.len() as u64))
    }

    fn close(self: Rc<Self>) -> IoFuture<'static, ()> {
        ready(Ok(())).boxed_local()
    }
}

/// A [`Clock`] that moves only when its owner moves it (tests, the simulation): `now_ms` is
/// `wall_base_ms` plus the ms last [`set`](ManualClock::set). A timer whose deadline is in
/// the future never fires: nothing driven by this clock waits on the log's timers.
pub struct ManualClock {
    base: Instant,
    wall_base_ms: i64,
    ms: Cell<i64>,
}

impl ManualClock {
    pub fn new(base: Instant, wall_base_ms: i64) -> Self {
        Self {
            base,
            wall_base_ms,
            ms: Cell::new(0),
        }
    }

    pub fn ms(&self) -> i64 {
        self.ms.get()
    }

    pub fn set(&self, ms: i64) {
        self.ms.set(ms);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.wall_base_ms + self.ms.get()
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.ms.get().max(0) as u64)
    }

    fn sleep_until(&self, deadline: Instant) -> LocalBoxFuture<'static, ()> {
        if deadline <= self.now() {
            ready(()).boxed_local()
        } else {
            futures::future::pending().boxed_local()
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn now<T>(f: IoFuture<'_, T>) -> io::Result<T> {
        f.now_or_never().expect("MemDisk futures are ready")
    }

    fn write(file: &dyn DiskFile, fill: u8, pos: u64) {
        let mut buf = file.alloc_buffer(ALIGNMENT as usize);
        buf.as_bytes_mut().fill(fill);
        assert_eq!(now(file.write_at(buf, pos)).unwrap(), ALIGNMENT as usize);
    }

    #[test]
    fn a_crash_keeps_only_synced_bytes() {
        let disk = MemDisk::new();
        let dir = Path::new("/p");
        now(disk.create_dir_all(dir)).unwrap();
        let path = dir.join("a.log");
        let file = now(disk.open(&path, OpenMode::ReadWrite)).unwrap();
        write(&*file, 1, 0);
        now(file.fdatasync()).unwrap();
        disk.sync_dir(dir).unwrap();
        write(&*file, 2, ALIGNMENT);
        assert_eq!(now(file.size()).unwrap(), 2 * ALIGNMENT);
        assert_eq!(disk.list_dir(dir).unwrap(), vec!["a.log".to_string()]);
        disk.crash();
        assert_eq!(disk.contents(&path), Some(vec![1; ALIGNMENT as usize]));
        assert!(
            now(file.size()).is_err(),
            "a handle from before the crash is dead"
        );
        let file = now(disk.open(&path, OpenMode::ReadOnly)).unwrap();
        assert_eq!(&*now(file.read_at(500, 100)).unwrap(), &[1u8; 12][..]);
    }

    #[test]
    fn a_crash_keeps_only_synced_names() {
        let disk = MemDisk::new();
        let dir = Path::new("/p");
        now(disk.create_dir_all(dir)).unwrap();
        let (kept, renamed, unsynced) = (dir.join("kept"), dir.join("renamed"), dir.join("new"));
        for path in [&kept, &renamed] {
            let file = now(disk.open(path, OpenMode::ReadWrite)).unwrap();
            write(&*file, 7, 0);
            now(file.fdatasync()).unwrap();
        }
        disk.sync_dir(dir).unwrap();
        disk.rename(&renamed, &dir.join("moved")).unwrap();
        disk.remove_file(&kept).unwrap();
        let file = now(disk.open(&unsynced, OpenMode::ReadWrite)).unwrap();
        write(&*file, 8, 0);
        now(file.fdatasync()).unwrap();
        disk.crash();
        let mut names = disk.list_dir(dir).unwrap();
        names.sort();
        assert_eq!(
            names,
            ["kept", "renamed"],
            "unsynced entry changes are undone"
        );
        assert_eq!(disk.contents(&renamed), Some(vec![7; ALIGNMENT as usize]));
    }

    #[test]
    fn unaligned_writes_and_missing_files_fail() {
        let disk = MemDisk::new();
        let dir = Path::new("/p");
        assert!(now(disk.open(&dir.join("x"), OpenMode::ReadWrite)).is_err());
        now(disk.create_dir_all(dir)).unwrap();
        assert!(now(disk.open(&dir.join("x"), OpenMode::ReadOnly)).is_err());
        let file = now(disk.open(&dir.join("x"), OpenMode::ReadWrite)).unwrap();
        let buf = file.alloc_buffer(100);
        assert!(now(file.write_at(buf, 0)).is_err());
        disk.rename(&dir.join("x"), &dir.join("y")).unwrap();
        assert!(disk.exists(&dir.join("y")) && !disk.exists(&dir.join("x")));
        disk.remove_dir_all(dir).unwrap();
        assert!(!disk.exists(&dir.join("y")));
    }
}
