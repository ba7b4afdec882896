//! Files: O_DIRECT files with aligned buffers (the logs) and buffered files (the Raft WAL).

use std::cell::RefCell;
use std::io;
use std::ops::Deref;
use std::path::Path;
use std::rc::Rc;

/// A file opened with O_DIRECT: reads and writes go to the device through io_uring, at
/// offsets and lengths aligned to [`DmaFile::align_up`].
pub struct DmaFile(glommio::io::DmaFile);

/// Memory suitably aligned for a [`DmaFile`] write; get one from
/// [`DmaFile::alloc_dma_buffer`].
pub struct DmaBuffer(glommio::io::DmaBuffer);

/// Bytes read from a file; derefs to `[u8]` (empty at end of file).
pub struct ReadResult(glommio::io::ReadResult);

/// A file read and written through the page cache.
pub struct BufferedFile(glommio::io::BufferedFile);

/// How to open a [`DmaFile`] or [`BufferedFile`], as `std::fs::OpenOptions`.
pub struct OpenOptions(glommio::io::OpenOptions);

/// The methods both kinds of file have, delegated alike.
macro_rules! shared_file_methods {
    () => {
        /// Reads up to `size` bytes at `pos` (a [`DmaFile`]: any offset and length); fewer
        /// at end of file.
        #[inline]
        pub async fn read_at(&self, pos: u64, size: usize) -> io::Result<ReadResult> {
            Ok(ReadResult(self.0.read_at(pos, size).await?))
        }

        #[inline]
        pub async fn fdatasync(&self) -> io::Result<()> {
            Ok(self.0.fdatasync().await?)
        }

        #[inline]
        pub async fn truncate(&self, size: u64) -> io::Result<()> {
            Ok(self.0.truncate(size).await?)
        }

        #[inline]
        pub async fn file_size(&self) -> io::Result<u64> {
            Ok(self.0.file_size().await?)
        }

        #[inline]
        pub async fn close(self) -> io::Result<()> {
            Ok(self.0.close().await?)
        }
    };
}

impl DmaFile {
    /// Opens an existing file read-only.
    #[inline]
    pub async fn open<P: AsRef<Path>>(path: P) -> io::Result<DmaFile> {
        Ok(DmaFile(glommio::io::DmaFile::open(path).await?))
    }

    /// The device's alignment for O_DIRECT positions and lengths.
    #[inline]
    pub fn alignment(&self) -> u64 {
        self.0.alignment()
    }

    #[inline]
    pub fn align_up(&self, v: u64) -> u64 {
        self.0.align_up(v)
    }

    #[inline]
    pub fn align_down(&self, v: u64) -> u64 {
        self.0.align_down(v)
    }

    /// A buffer of `size` bytes (a multiple of the alignment) to fill and pass to
    /// [`write_at`](DmaFile::write_at).
    #[inline]
    pub fn alloc_dma_buffer(&self, size: usize) -> DmaBuffer {
        DmaBuffer(self.0.alloc_dma_buffer(size))
    }

    /// Writes `buf` at `pos` (aligned); returns how many bytes were written and, to reuse,
    /// the buffer, unless the runtime still holds it (then it is freed when released).
    /// Dropping the future before completion leaves the buffer to the runtime, which frees
    /// it once the kernel is done with it.
    #[inline]
    pub async fn write_at(
        &self,
        buf: DmaBuffer,
        pos: u64,
    ) -> (io::Result<usize>, Option<DmaBuffer>) {
        let shared = Rc::new(buf.0);
        let written = self.0.write_rc_at(shared.clone(), pos).await;
        (written.map_err(Into::into), reclaim(shared))
    }

    shared_file_methods!();
}

/// The buffer of a completed write, if no one else (an io_uring operation) still holds it:
/// memory the kernel may still read is never handed out again.
#[inline]
fn reclaim(shared: Rc<glommio::io::DmaBuffer>) -> Option<DmaBuffer> {
    Rc::try_unwrap(shared).ok().map(DmaBuffer)
}

impl AsRef<[u8]> for DmaBuffer {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl DmaBuffer {
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    #[inline]
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }
}

impl Deref for ReadResult {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl BufferedFile {
    /// Opens an existing file (or directory, to sync it) read-only.
    #[inline]
    pub async fn open<P: AsRef<Path>>(path: P) -> io::Result<BufferedFile> {
        Ok(BufferedFile(glommio::io::BufferedFile::open(path).await?))
    }

    /// Writes `buf` at `pos`; returns how many bytes were written.
    #[inline]
    pub async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<usize> {
        Ok(self.0.write_at(buf, pos).await?)
    }

    shared_file_methods!();

    #[inline]
    pub async fn rename<P: AsRef<Path>>(&mut self, new_path: P) -> io::Result<()> {
        Ok(self.0.rename(new_path).await?)
    }
}

impl OpenOptions {
    #[inline]
    pub fn new() -> OpenOptions {
        OpenOptions(glommio::io::OpenOptions::new())
    }

    #[inline]
    pub fn read(&mut self, read: bool) -> &mut Self {
        self.0.read(read);
        self
    }

    #[inline]
    pub fn write(&mut self, write: bool) -> &mut Self {
        self.0.write(write);
        self
    }

    #[inline]
    pub fn create(&mut self, create: bool) -> &mut Self {
        self.0.create(create);
        self
    }

    #[inline]
    pub fn truncate(&mut self, truncate: bool) -> &mut Self {
        self.0.truncate(truncate);
        self
    }

    #[inline]
    pub async fn dma_open<P: AsRef<Path>>(&self, path: P) -> io::Result<DmaFile> {
        Ok(DmaFile(self.0.dma_open(path).await?))
    }

    #[inline]
    pub async fn buffered_open<P: AsRef<Path>>(&self, path: P) -> io::Result<BufferedFile> {
        Ok(BufferedFile(self.0.buffered_open(path).await?))
    }
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    /// Devices (st_dev) on which this thread already ran glommio's poll-ring probe.
    static PROBED_DEVICES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Makes glommio's per-device DMA read probe see a non-empty file. Call it, on the thread
/// that will use them, before opening any [`DmaFile`] in `dir` (the storage calls it when it
/// opens a partition directory); cheap after the first call per device and thread.
///
/// Why: glommio 0.9 decides whether a device supports io_uring polled I/O (IOPOLL) the
/// first time a thread opens a `DmaFile` on it, by reading 512 bytes at offset 0 of that
/// file, and caches the answer per thread and device. If that first file is EMPTY (a new
/// segment, say), the read succeeds at EOF without reaching the device, glommio caches
/// "pollable", and every later DMA read on that device fails with EOPNOTSUPP while writes
/// keep working (seen on kernel 6.18). So the first open per (thread, device) is of a
/// 4 KiB scratch file, `dir/.dma-probe`, written here and removed right after. Remove this
/// once glommio probes correctly.
///
/// Blocks briefly on `std::fs` (metadata, one small write, one unlink) on the first call.
pub async fn prepare_dma_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir)?.dev();
    if PROBED_DEVICES.with(|p| p.borrow().contains(&dev)) {
        return Ok(());
    }
    let probe = dir.join(".dma-probe");
    std::fs::write(&probe, [0u8; 4096])?;
    let opened = DmaFile::open(&probe).await;
    let _ = std::fs::remove_file(&probe);
    opened?.close().await?;
    PROBED_DEVICES.with(|p| p.borrow_mut().push(dev));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_still_shared_is_not_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        super::super::block_on(async move {
            let mut options = OpenOptions::new();
            let file = options
                .read(true)
                .write(true)
                .create(true)
                .dma_open(&path)
                .await;
            let buffer = file.unwrap().alloc_dma_buffer(4096).0;
            let shared = Rc::new(buffer);
            let in_flight = shared.clone();
            assert!(reclaim(shared).is_none(), "an in-flight operation holds it");
            assert_eq!(reclaim(in_flight).map(|b| b.as_bytes().len()), Some(4096));
        });
    }
}
