//! The bytes of a snapshot body as openraft moves them (`TypeConfig::SnapshotData`): in memory,
//! or a window of a file that is read only as far as someone reads it: the snapshot file, or the
//! unnamed file a body being received is written to.
//!
//! openraft asks for the current snapshot when it starts (for its meta alone) and when it sends
//! the snapshot to a follower (in chunks). Reading the whole file for either made a restart take
//! seconds per million records and made every send hold the whole body in memory; a file window
//! costs one open file and a chunk at a time. A received body went to memory too, until the
//! install ended (99 MiB at 1M records); it now goes to a file in the snapshot folder.

use std::io;
use std::io::Cursor;
use std::io::SeekFrom;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use tokio::io::AsyncRead;
use tokio::io::AsyncSeek;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;

pub struct SnapshotBodyBytes(Source);

enum Source {
    Memory(Cursor<Vec<u8>>),
    /// `len` bytes of `file` from `offset`, read up to `position`. The handle keeps reading the
    /// same snapshot when a newer one is renamed over the path.
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
        position: u64,
        /// Only a body being received is written (at `position`, growing `len`).
        writable: bool,
    },
}

impl SnapshotBodyBytes {
    pub fn in_memory(bytes: Vec<u8>) -> SnapshotBodyBytes {
        SnapshotBodyBytes(Source::Memory(Cursor::new(bytes)))
    }

    /// The `len` bytes of `file` that start at `offset`.
    pub fn file_window(file: std::fs::File, offset: u64, len: u64) -> SnapshotBodyBytes {
        SnapshotBodyBytes(Source::File { file, offset, len, position: 0, writable: false })
    }

    /// An empty body to receive into, kept in a file at `path` that is removed at once: the open
    /// handle holds the space until the body is dropped, and a crash leaves nothing behind
    /// (unless it falls between the two calls: `path` should be a name that opening the store
    /// cleans up). Blocking.
    pub fn receiving_at(path: &std::path::Path) -> io::Result<SnapshotBodyBytes> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        std::fs::remove_file(path)?;
        Ok(SnapshotBodyBytes(Source::File { file, offset: 0, len: 0, position: 0, writable: true }))
    }

    pub fn len(&self) -> u64 {
        match &self.0 {
            Source::Memory(cursor) => cursor.get_ref().len() as u64,
            Source::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the body from its start, whatever has been read through the async interface.
    /// Blocking for a file window.
    pub fn reader(&self) -> Box<dyn io::Read + Send + '_> {
        match &self.0 {
            Source::Memory(cursor) => Box::new(cursor.get_ref().as_slice()),
            Source::File { file, offset, len, .. } => {
                Box::new(WindowReader { file, offset: *offset, len: *len, position: 0 })
            }
        }
    }

    /// The whole body (read from the file for a file window). Blocking.
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        match self.0 {
            Source::Memory(cursor) => Ok(cursor.into_inner()),
            Source::File { file, offset, len, .. } => {
                let len = usize::try_from(len).map_err(io::Error::other)?;
                let mut bytes = vec![0; len];
                file.read_exact_at(&mut bytes, offset)?;
                Ok(bytes)
            }
        }
    }
}

/// A file window read from its start with positioned reads.
struct WindowReader<'a> {
    file: &'a std::fs::File,
    offset: u64,
    len: u64,
    position: u64,
}

impl io::Read for WindowReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_window(self.file, self.offset, self.len, &mut self.position, buf)
    }
}

/// Reads into `buf` from `position` within the `len` bytes of `file` at `offset`, and moves
/// `position` on; 0 at the window's end. A file shorter than its window is an error.
fn read_window(file: &std::fs::File, offset: u64, len: u64, position: &mut u64, buf: &mut [u8]) -> io::Result<usize> {
    let wanted = (len - (*position).min(len)).min(buf.len() as u64) as usize;
    if wanted == 0 {
        return Ok(0);
    }
    let read = file.read_at(&mut buf[..wanted], offset + *position)?;
    if read == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the snapshot file is shorter than its body"));
    }
    *position += read as u64;
    Ok(read)
}

impl std::fmt::Debug for SnapshotBodyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.0 {
            Source::Memory(_) => "memory",
            Source::File { .. } => "file",
        };
        f.debug_struct("SnapshotBodyBytes").field("source", &kind).field("len", &self.len()).finish()
    }
}

impl AsyncRead for SnapshotBodyBytes {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Source::Memory(cursor) => Pin::new(cursor).poll_read(cx, buf),
            Source::File { file, offset, len, position, .. } => {
                // A positioned read of at most one chunk (openraft reads `snapshot_max_chunk_size`
                // at a time) from the page cache: short enough to do on the async worker.
                let target = buf.initialize_unfilled();
                let read = read_window(file, *offset, *len, position, target)?;
                buf.advance(read);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncSeek for SnapshotBodyBytes {
    fn start_seek(mut self: Pin<&mut Self>, to: SeekFrom) -> io::Result<()> {
        match &mut self.0 {
            Source::Memory(cursor) => Pin::new(cursor).start_seek(to),
            Source::File { len, position, .. } => {
                let target = match to {
                    SeekFrom::Start(at) => Some(at),
                    SeekFrom::End(delta) => len.checked_add_signed(delta),
                    SeekFrom::Current(delta) => position.checked_add_signed(delta),
                };
                *position = target.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the snapshot body")
                })?;
                Ok(())
            }
        }
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match &mut self.0 {
            Source::Memory(cursor) => Pin::new(cursor).poll_complete(cx),
            Source::File { position, .. } => Poll::Ready(Ok(*position)),
        }
    }
}

/// Only a body being received is written; the snapshot file is never written through this.
fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "a snapshot file's body is read-only")
}

impl AsyncWrite for SnapshotBodyBytes {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            Source::Memory(cursor) => Pin::new(cursor).poll_write(cx, bytes),
            Source::File { writable: false, .. } => Poll::Ready(Err(read_only())),
            Source::File { file, offset, len, position, writable: true } => {
                // A positioned write of one received chunk (1 MiB at most, `network.rs`) to the
                // page cache: short enough to do on the async worker, like the reads.
                file.write_all_at(bytes, *offset + *position)?;
                *position += bytes.len() as u64;
                *len = (*len).max(*position);
                Poll::Ready(Ok(bytes.len()))
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Source::Memory(cursor) => Pin::new(cursor).poll_flush(cx),
            Source::File { .. } => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Source::Memory(cursor) => Pin::new(cursor).poll_shutdown(cx),
            Source::File { .. } => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncSeekExt;

    use super::*;

    #[tokio::test]
    async fn a_received_body_is_written_at_each_offset_to_a_file_that_leaves_no_name() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("receiving");
        let mut body = SnapshotBodyBytes::receiving_at(&path).expect("receive file");
        assert!(!path.exists(), "the name is gone once the file is open");
        assert!(SnapshotBodyBytes::receiving_at(&path).is_ok(), "so the next receive can use it");
        // As openraft writes chunks: in order, then one sent again from an earlier offset.
        let content: Vec<u8> = (0..=255u8).cycle().take(5_000).collect();
        body.write_all(&content[..2_000]).await.expect("chunk 1");
        body.write_all(&content[2_000..4_000]).await.expect("chunk 2");
        body.seek(SeekFrom::Start(2_000)).await.expect("seek back");
        body.write_all(&content[2_000..]).await.expect("chunk 2 again, and 3");
        body.shutdown().await.expect("shutdown");
        assert_eq!(body.len(), 5_000);
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut body.reader(), &mut read).expect("read from the start");
        assert_eq!(read, content);
        assert_eq!(body.into_bytes().expect("whole body"), content);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0, "nothing left in the folder");
    }

    fn window_of(content: &[u8], offset: u64, len: u64) -> SnapshotBodyBytes {
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(content).expect("write");
        SnapshotBodyBytes::file_window(file, offset, len)
    }

    #[tokio::test]
    async fn a_file_window_reads_and_seeks_like_the_same_bytes_in_memory() {
        let content: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let (offset, len) = (17u64, 9_000u64);
        let expected = content[offset as usize..(offset + len) as usize].to_vec();
        let mut window = window_of(&content, offset, len);
        let mut memory = SnapshotBodyBytes::in_memory(expected.clone());
        for at in [0u64, 1, 4_096, 8_999, 9_000] {
            for source in [&mut window, &mut memory] {
                assert_eq!(source.seek(SeekFrom::Start(at)).await.expect("seek"), at);
                let mut chunk = vec![0; 1_000];
                let read = source.read(&mut chunk).await.expect("read");
                let end = (at as usize + 1_000).min(len as usize);
                assert_eq!(&chunk[..read], &expected[at as usize..end], "at {at}");
            }
        }
        assert_eq!(window.seek(SeekFrom::End(-10)).await.expect("seek from end"), len - 10);
        assert!(window.seek(SeekFrom::Current(-(len as i64))).await.is_err(), "before the start");
        assert_eq!(window.len(), len);
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut window.reader(), &mut read).expect("read from the start");
        assert_eq!(read, expected, "the blocking reader starts at the body's start");
        assert_eq!(window.into_bytes().expect("whole body"), expected);
    }

    #[tokio::test]
    async fn a_file_window_is_read_only_and_reports_a_truncated_file() {
        let mut window = window_of(b"0123456789", 2, 20);
        assert!(tokio::io::AsyncWriteExt::write_all(&mut window, b"x").await.is_err(), "writes are refused");
        let mut all = Vec::new();
        let error = window.read_to_end(&mut all).await.expect_err("the file ends before the window");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(all, b"23456789");
    }
}
