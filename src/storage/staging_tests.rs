//! The staging buffers with a real O_DIRECT file (`DmaDisk`): a completed write hands its
//! buffer to the next write, one dropped in flight never does, and a reused buffer's stale
//! bytes never reach the disk.

use std::path::Path;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::staging::{STAGING_UNIT, kept};
use crate::runtime::{block_on, sleep};
use crate::storage::disk::{Disk, DiskFile, DmaDisk, OpenMode};
use crate::storage::segment::Segment;

async fn open_dma(dir: &Path) -> Rc<dyn DiskFile> {
    DmaDisk.create_dir_all(dir).await.unwrap();
    let file = DmaDisk.open(&dir.join("f"), OpenMode::ReadWrite).await;
    file.unwrap()
}

#[test]
fn a_completed_write_gives_its_buffer_to_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async move {
        let file = open_dma(dir.path()).await;
        let mut buf = file.alloc_buffer(8192);
        buf.as_bytes_mut().fill(0xab);
        let memory = buf.as_bytes().as_ptr();
        assert_eq!(file.write_at(buf, 0).await.unwrap(), 8192);
        assert_eq!(kept(), 1);
        assert!(file.alloc_buffer(4096).as_bytes().as_ptr() != memory);
        let again = file.alloc_buffer(8192);
        assert_eq!(again.as_bytes().as_ptr(), memory, "the same memory");
        assert!(
            again.as_bytes().iter().all(|&b| b == 0xab),
            "stale contents"
        );
        assert_eq!(kept(), 0);
        assert!(
            file.read_at(0, 8192)
                .await
                .unwrap()
                .iter()
                .all(|&b| b == 0xab)
        );
    });
}

#[test]
fn a_write_dropped_in_flight_does_not_give_its_buffer_back() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async move {
        let file = open_dma(dir.path()).await;
        {
            let mut write = pin!(file.write_at(file.alloc_buffer(8192), 0));
            assert!(futures::poll!(write.as_mut()).is_pending());
            // Lets the runtime submit (and perhaps complete) the write unobserved.
            sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            kept(),
            0,
            "only a write seen to complete returns its buffer"
        );
        assert_eq!(
            file.write_at(file.alloc_buffer(8192), 0).await.unwrap(),
            8192
        );
        assert_eq!(kept(), 1);
    });
}

#[test]
fn a_reused_buffer_writes_zero_padding_not_stale_bytes() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async move {
        let file = open_dma(dir.path()).await;
        let mut stale = file.alloc_buffer(STAGING_UNIT);
        stale.as_bytes_mut().fill(0xff);
        // A completed write gives the stale buffer to the pool.
        file.write_at(stale, 0).await.unwrap();
        assert_eq!(kept(), 1);
        let disk: Rc<dyn Disk> = Rc::new(DmaDisk);
        let segment = Segment::new(&disk, dir.path(), 0, 0);
        let data = Bytes::from(vec![7u8; 100]);
        let written = segment.write(std::slice::from_ref(&data)).await.unwrap();
        assert_eq!(kept(), 1, "the stale buffer was taken and given back");
        let on_disk = written.read_at(0, STAGING_UNIT).await.unwrap();
        assert_eq!(on_disk.len(), STAGING_UNIT);
        assert_eq!(&on_disk[..100], &data[..]);
        assert!(on_disk[100..].iter().all(|&b| b == 0), "zero padding");
    });
}
