//! Everything the storage does with the file system, behind two traits: [`Disk`]
//! (directories and opening files) and [`DiskFile`] (one open file: aligned positional
//! writes of [`IoBuffer`]s, positional reads, fdatasync, truncate, size, close). The log,
//! its segments, indexes, checkpoints and recovery only go through them, so the same code
//! runs over real O_DIRECT files ([`DmaDisk`], the only storage code that names the
//! runtime's file types) and over a simulated disk (`mem_disk::MemDisk` in tests).
//!
//! Directory operations are synchronous: they are rare metadata calls (create, list,
//! unlink, rename, directory fsync) for which blocking the shard briefly is acceptable.

use std::io;
use std::ops::Deref;
use std::path::Path;
use std::rc::Rc;

use futures::FutureExt;
use futures::future::LocalBoxFuture;

use super::staging;
use super::test_faults::{self, FileOp};
use crate::runtime::{DmaBuffer, DmaFile, OpenOptions, ReadResult};

/// An asynchronous file operation; one allocation per call.
pub type IoFuture<'a, T> = LocalBoxFuture<'a, io::Result<T>>;

/// How [`Disk::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read and write, created empty if missing (segment files).
    ReadWrite,
    /// Write only, created if missing, emptied if present (small checkpoint files).
    Replace,
    /// Read only; a missing file is an error.
    ReadOnly,
}

/// The file system as the storage sees it. Paths are those the log computes from its
/// directory.
pub trait Disk {
    /// Creates `dir` and its parents and readies it for the file type (production: the
    /// runtime's DMA probe, see `runtime::prepare_dma_dir`).
    fn create_dir_all<'a>(&'a self, dir: &'a Path) -> IoFuture<'a, ()>;
    /// Names of the entries of `dir`, in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> bool;
    /// `NotFound` if there is no such file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Replaces `to` atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals of entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn open<'a>(&'a self, path: &'a Path, mode: OpenMode) -> IoFuture<'a, Rc<dyn DiskFile>>;
}

/// One open file. Writes are O_DIRECT-shaped: positions and lengths multiples of
/// [`alignment`](Self::alignment), from buffers the file allocated.
pub trait DiskFile {
    fn alignment(&self) -> u64;
    /// A buffer of `len` bytes that [`write_at`](Self::write_at) accepts; its contents are
    /// unspecified (a reused buffer's stale bytes): the caller writes every byte.
    fn alloc_buffer(&self, len: usize) -> IoBuffer;
    /// Returns the number of bytes written. The buffer may be reused by a later
    /// [`alloc_buffer`](Self::alloc_buffer) once the write completed.
    fn write_at(&self, buf: IoBuffer, pos: u64) -> IoFuture<'_, usize>;
    /// Up to `len` bytes at `pos`; fewer at the end of the file.
    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, ReadBuf>;
    fn fdatasync(&self) -> IoFuture<'_, ()>;
    fn truncate(&self, size: u64) -> IoFuture<'_, ()>;
    fn size(&self) -> IoFuture<'_, u64>;
    /// Closes the file if this is its last handle (else the other handles keep it open).
    fn close(self: Rc<Self>) -> IoFuture<'static, ()>;

    fn align_down(&self, v: u64) -> u64 {
        v - v % self.alignment()
    }
    fn align_up(&self, v: u64) -> u64 {
        self.align_down(v + self.alignment() - 1)
    }
}

/// A write buffer: a DMA buffer on a real disk, plain memory on a simulated one.
/// [`DiskFile::alloc_buffer`] gives the right kind.
pub struct IoBuffer(BufferKind);

enum BufferKind {
    Dma(DmaBuffer),
    Heap(Vec<u8>),
}

impl IoBuffer {
    pub fn heap(len: usize) -> Self {
        IoBuffer(BufferKind::Heap(vec![0; len]))
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            BufferKind::Dma(b) => b.as_bytes(),
            BufferKind::Heap(v) => v,
        }
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            BufferKind::Dma(b) => b.as_bytes_mut(),
            BufferKind::Heap(v) => v,
        }
    }
}

/// Bytes returned by [`DiskFile::read_at`].
pub struct ReadBuf(ReadKind);

enum ReadKind {
    Dma(ReadResult),
    Heap(Vec<u8>),
}

impl ReadBuf {
    pub fn heap(bytes: Vec<u8>) -> Self {
        ReadBuf(ReadKind::Heap(bytes))
    }
}

impl Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            ReadKind::Dma(r) => r,
            ReadKind::Heap(v) => v,
        }
    }
}

/// The production disk: O_DIRECT files through the runtime's DMA file type.
#[derive(Debug, Default, Clone, Copy)]
pub struct DmaDisk;

impl Disk for DmaDisk {
    fn create_dir_all<'a>(&'a self, dir: &'a Path) -> IoFuture<'a, ()> {
        async move {
            test_faults::check(FileOp::CreateDir, dir)?;
            std::fs::create_dir_all(dir)?;
            crate::runtime::prepare_dma_dir(dir).await
        }
        .boxed_local()
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn open<'a>(&'a self, path: &'a Path, mode: OpenMode) -> IoFuture<'a, Rc<dyn DiskFile>> {
        async move {
            let file = match mode {
                OpenMode::ReadWrite => {
                    let mut options = OpenOptions::new();
                    options.read(true).write(true).create(true);
                    options.dma_open(path).await?
                }
                OpenMode::Replace => {
                    let mut options = OpenOptions::new();
                    options.write(true).create(true).truncate(true);
                    options.dma_open(path).await?
                }
                OpenMode::ReadOnly => DmaFile::open(path).await?,
            };
            let file = DmaDiskFile {
                file: Rc::new(file),
                path: path.into(),
            };
            Ok(Rc::new(file) as Rc<dyn DiskFile>)
        }
        .boxed_local()
    }
}

/// A `DmaFile` behind [`DiskFile`]; its path names it to the test fault injection.
struct DmaDiskFile {
    file: Rc<DmaFile>,
    path: Rc<Path>,
}

impl DiskFile for DmaDiskFile {
    fn alignment(&self) -> u64 {
        self.file.alignment()
    }

    fn alloc_buffer(&self, len: usize) -> IoBuffer {
        let buf = staging::take(len).unwrap_or_else(|| self.file.alloc_dma_buffer(len));
        IoBuffer(BufferKind::Dma(buf))
    }

    fn write_at(&self, buf: IoBuffer, pos: u64) -> IoFuture<'_, usize> {
        if let Err(e) = test_faults::check(FileOp::Write, &self.path) {
            return futures::future::ready(Err(e)).boxed_local();
        }
        let buf = match buf.0 {
            BufferKind::Dma(b) => b,
            // Not allocated by this file (the simulated disk's kind): one copy.
            BufferKind::Heap(v) => {
                let mut b = self.file.alloc_dma_buffer(v.len());
                b.as_bytes_mut().copy_from_slice(&v);
                b
            }
        };
        async move {
            let (written, done) = self.file.write_at(buf, pos).await;
            if let Some(buf) = done {
                staging::give(buf);
            }
            written
        }
        .boxed_local()
    }

    fn read_at(&self, pos: u64, len: usize) -> IoFuture<'_, ReadBuf> {
        async move { Ok(ReadBuf(ReadKind::Dma(self.file.read_at(pos, len).await?))) }.boxed_local()
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        if let Err(e) = test_faults::check(FileOp::Fdatasync, &self.path) {
            return futures::future::ready(Err(e)).boxed_local();
        }
        self.file.fdatasync().boxed_local()
    }

    fn truncate(&self, size: u64) -> IoFuture<'_, ()> {
        self.file.truncate(size).boxed_local()
    }

    fn size(&self) -> IoFuture<'_, u64> {
        self.file.file_size().boxed_local()
    }

    fn close(self: Rc<Self>) -> IoFuture<'static, ()> {
        async move {
            match Rc::try_unwrap(self)
                .ok()
                .and_then(|f| Rc::try_unwrap(f.file).ok())
            {
                Some(file) => Ok(file.close().await?),
                None => Ok(()),
            }
        }
        .boxed_local()
    }
}

/// Writes a small file whole (checkpoints, indexes): zero padded to the alignment,
/// fdatasync'ed, closed.
pub(crate) async fn write_small_file(disk: &dyn Disk, path: &Path, data: &[u8]) -> io::Result<()> {
    let file = disk.open(path, OpenMode::Replace).await?;
    let padded = file.align_up(data.len().max(1) as u64) as usize;
    let mut buf = file.alloc_buffer(padded);
    buf.as_bytes_mut()[..data.len()].copy_from_slice(data);
    buf.as_bytes_mut()[data.len()..].fill(0);
    file.write_at(buf, 0).await?;
    file.fdatasync().await?;
    file.close().await
}

/// The whole content of a small file; None if it is missing or unreadable.
pub(crate) async fn read_small_file(disk: &dyn Disk, path: &Path) -> Option<Vec<u8>> {
    read_small_file_up_to(disk, path, u64::MAX).await
}

/// The whole content of a file of at most `max_len` bytes; None if it is missing,
/// unreadable or larger.
pub(crate) async fn read_small_file_up_to(
    disk: &dyn Disk,
    path: &Path,
    max_len: u64,
) -> Option<Vec<u8>> {
    let file = disk.open(path, OpenMode::ReadOnly).await.ok()?;
    let size = file.size().await.ok()?;
    let data = match usize::try_from(size) {
        Ok(size) if size as u64 <= max_len => file.read_at(0, size).await.ok().map(|d| d.to_vec()),
        _ => None,
    };
    let _ = file.close().await;
    data
}
