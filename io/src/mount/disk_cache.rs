//! The disk (L2) cache's files, and the threads that write and read them.
//!
//! One file per chunk, named by its key, holding the checksum and then the
//! bytes. Keys are the file's identity on the host (device, inode), its
//! version and the chunk index, so a new mount finds its chunks again.
//!
//! The disk cache must never slow a read down. The core demotes chunks
//! to disk when they leave memory, which during a long cold read is about
//! as fast as they arrive; on a small machine writing them costs as much
//! CPU as receiving them. So writes are best effort:
//!
//! * the writing thread runs at the lowest CPU priority, so it takes only
//!   time nothing else wants (reads have their own thread at normal
//!   priority: a reader is waiting for them);
//! * at most [`QUEUED_BYTES`] of writes wait for it; a write that finds
//!   the queue full is not queued, and the driver tells the core, which
//!   forgets the chunk (it is fetched from the host when next needed).
//!
//! Reads and deletes are always carried out: a read has a reader
//! waiting, and a delete keeps the directory within its budget.
//!
//! A read asked for on fuser's thread while the reading thread is idle and
//! no other kernel request waits is not queued but done right there, with
//! the core's lock released ([`DiskReader`], used by `driver::Shared`):
//! the kernel request waits for it anyway, and waking the idle reading
//! thread and then the driver to carry the chunk back cost more than the
//! read (random 4 KiB reads at queue depth 1 from a disk-cached file: 88–
//! 111 µs of the mount's CPU per read before, 59–76 µs after). Otherwise
//! the reading thread takes it as before, so reads at a higher queue
//! depth still go on beside fuser's thread.
//!
//! A chunk file is written under a temporary name and renamed, so a
//! reader (the reading thread or fuser's) sees a whole chunk or none (a
//! read that overtakes its chunk's write finds nothing and the chunk
//! comes from the host). The core also verifies every chunk's checksum
//! when it is read back.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use tracing::{debug, info};
use wormhole_core::cache::ChunkKey;
use wormhole_core::proto::{Checksum, FileKey};

use crate::mount::MountError;

/// Bytes before a chunk's contents in its cache file: its checksum.
const CHECKSUM_LEN: usize = 32;
/// Chunk bytes waiting to be written at most (see the module docs).
pub(crate) const QUEUED_BYTES: u64 = 64 << 20;
/// The disk thread's nice value: the lowest priority there is.
const NICE: i32 = 19;

/// A chunk read back from disk (`None`: missing or unreadable).
pub(crate) type DiskRead = (ChunkKey, Option<(Bytes, Checksum)>);

/// What the writing thread does, in order.
enum DiskCmd {
    Write {
        key: ChunkKey,
        data: Bytes,
        checksum: Checksum,
    },
    Delete {
        key: ChunkKey,
    },
    /// Answered once everything queued before it is done (for tests).
    #[cfg(test)]
    Barrier(std::sync::mpsc::Sender<()>),
}

/// An opened cache directory and the chunks found in it.
pub(crate) struct DiskCache {
    dir: PathBuf,
    /// Chunks found at startup, with their sizes, for the core's index.
    pub(crate) found: Vec<(ChunkKey, u64)>,
}

impl DiskCache {
    /// Opens (or creates) `root/chunks` and lists the chunks in it;
    /// anything else there (half-written files of an old layout,
    /// strangers) is removed.
    pub(crate) fn open(root: &Path) -> Result<DiskCache, MountError> {
        let dir = root.join("chunks");
        let fail = |source| MountError::CacheDir {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let name = entry.file_name();
            let parsed = name.to_str().and_then(parse_chunk_name);
            match (parsed, entry.metadata()) {
                (Some(key), Ok(meta)) if meta.is_file() && meta.len() >= CHECKSUM_LEN as u64 => {
                    found.push((key, meta.len() - CHECKSUM_LEN as u64));
                }
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        info!(dir = %dir.display(), chunks = found.len(), "disk cache opened");
        Ok(DiskCache { dir, found })
    }

    /// Starts the disk threads: commands in through the returned queue,
    /// reads out through `reads`. They end when the queue is dropped.
    pub(crate) fn spawn(self, reads: async_channel::Sender<DiskRead>) -> io::Result<DiskQueue> {
        let (tx, rx) = std::sync::mpsc::channel::<DiskCmd>();
        let (read_tx, read_rx) = std::sync::mpsc::channel::<ChunkKey>();
        let queued = Arc::new(AtomicU64::new(0));
        let in_thread = queued.clone();
        let reading = Arc::new(AtomicUsize::new(0));
        let reading_in_thread = reading.clone();
        let reader = DiskReader {
            dir: Arc::from(self.dir.as_path()),
            results: reads.clone(),
        };
        let dir = self.dir.clone();
        std::thread::Builder::new()
            .name("wormhole-l2-write".into())
            .spawn(move || {
                let me = rustix::thread::gettid();
                if let Err(e) = rustix::process::setpriority_process(Some(me), NICE) {
                    debug!(error = %e, "disk cache writer keeps its priority");
                }
                let mut seq = 0u64;
                for cmd in rx {
                    match cmd {
                        DiskCmd::Write {
                            key,
                            data,
                            checksum,
                        } => {
                            seq += 1;
                            if let Err(e) = write_chunk(&dir, seq, &key, &data, &checksum) {
                                debug!(error = %e, ?key, "disk cache write failed");
                            }
                            in_thread.fetch_sub(data.len() as u64, Ordering::Relaxed);
                        }
                        DiskCmd::Delete { key } => {
                            let _ = std::fs::remove_file(dir.join(chunk_name(&key)));
                        }
                        #[cfg(test)]
                        DiskCmd::Barrier(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        let dir = self.dir;
        std::thread::Builder::new()
            .name("wormhole-l2-read".into())
            .spawn(move || {
                for key in read_rx {
                    let got = read_chunk(&dir, &key);
                    reading_in_thread.fetch_sub(1, Ordering::Relaxed);
                    if reads.send_blocking((key, got)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(DiskQueue {
            tx,
            read_tx,
            queued,
            reading,
            reader,
        })
    }
}

/// The driver's end of the disk thread's queue. Every method returns
/// whether the command was queued.
pub(crate) struct DiskQueue {
    tx: std::sync::mpsc::Sender<DiskCmd>,
    read_tx: std::sync::mpsc::Sender<ChunkKey>,
    /// Bytes of writes queued and not yet written.
    queued: Arc<AtomicU64>,
    /// Reads queued for the reading thread and not yet done.
    reading: Arc<AtomicUsize>,
    /// Reads on the caller's thread ([`DiskQueue::reader`]).
    reader: DiskReader,
}

impl DiskQueue {
    /// Queues a chunk write unless [`QUEUED_BYTES`] are already waiting.
    pub(crate) fn write(&self, key: ChunkKey, data: Bytes, checksum: Checksum) -> bool {
        let len = data.len() as u64;
        // Only this thread adds, so the check cannot race another add.
        if self.queued.load(Ordering::Relaxed) + len > QUEUED_BYTES {
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        let sent = self.tx.send(DiskCmd::Write {
            key,
            data,
            checksum,
        });
        if sent.is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
        }
        sent.is_ok()
    }

    /// Queues the removal of a chunk's file.
    pub(crate) fn delete(&self, key: ChunkKey) -> bool {
        self.tx.send(DiskCmd::Delete { key }).is_ok()
    }

    /// Waits until every write and delete queued so far is carried out.
    #[cfg(test)]
    pub(super) fn settle(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        self.tx
            .send(DiskCmd::Barrier(done))
            .expect("the writer runs");
        wait.recv().expect("the writer answers");
    }

    /// Queues a read; its result arrives on the thread's `reads` channel.
    pub(crate) fn read(&self, key: ChunkKey) -> bool {
        self.reading.fetch_add(1, Ordering::Relaxed);
        let sent = self.read_tx.send(key).is_ok();
        if !sent {
            self.reading.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    /// Whether the reading thread has no read to do: queueing one would
    /// wake it (a hint; it may be just finishing its last one).
    pub(crate) fn reader_idle(&self) -> bool {
        self.reading.load(Ordering::Relaxed) == 0
    }

    /// Reads chunks on the caller's thread, outside the driver's lock.
    pub(crate) fn reader(&self) -> DiskReader {
        self.reader.clone()
    }
}

/// Reads chunk files on whichever thread calls it (fuser's, see the
/// module docs), and hands a result the caller cannot feed to the core
/// itself to the driver, on the channel the reading thread uses. Like the
/// reading thread it reads beside the writer, not after it: files are
/// renamed into place whole, and the core verifies what it gets.
#[derive(Clone)]
pub(crate) struct DiskReader {
    dir: Arc<Path>,
    results: async_channel::Sender<DiskRead>,
}

impl DiskReader {
    /// Reads `key`'s chunk file now (`None`: missing or unreadable).
    pub(crate) fn read(&self, key: ChunkKey) -> DiskRead {
        (key, read_chunk(&self.dir, &key))
    }

    /// Gives a result to the driver, as if the reading thread had read
    /// it. (Unbounded: this never waits. A driver that has stopped has
    /// failed the kernel requests waiting for it.)
    pub(crate) fn hand_over(&self, read: DiskRead) {
        let _ = self.results.try_send(read);
    }
}

fn chunk_name(key: &ChunkKey) -> String {
    format!(
        "{:016x}-{:016x}-{:016x}-{:016x}",
        key.file.dev, key.file.ino, key.version, key.index
    )
}

fn parse_chunk_name(name: &str) -> Option<ChunkKey> {
    let mut parts = name.split('-').map(|p| u64::from_str_radix(p, 16));
    let mut next = || parts.next()?.ok();
    let key = ChunkKey {
        file: FileKey {
            dev: next()?,
            ino: next()?,
        },
        version: next()?,
        index: next()?,
    };
    (name.len() == 4 * 16 + 3).then_some(key)
}

/// Checksum, then bytes, straight from the chunk's buffer (no copy),
/// under a temporary name (`.tmp-<seq>`, removed at the next open if a
/// crash leaves it), then renamed into place.
fn write_chunk(
    dir: &Path,
    seq: u64,
    key: &ChunkKey,
    data: &[u8],
    checksum: &Checksum,
) -> io::Result<()> {
    let tmp = dir.join(format!(".tmp-{seq}"));
    let mut file = File::create(&tmp)?;
    file.write_all(&checksum.0)?;
    file.write_all(data)?;
    std::fs::rename(&tmp, dir.join(chunk_name(key)))
}

fn read_chunk(dir: &Path, key: &ChunkKey) -> Option<(Bytes, Checksum)> {
    let bytes = std::fs::read(dir.join(chunk_name(key))).ok()?;
    let sum: [u8; CHECKSUM_LEN] = bytes.get(..CHECKSUM_LEN)?.try_into().ok()?;
    Some((Bytes::from(bytes).slice(CHECKSUM_LEN..), Checksum(sum)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u64) -> ChunkKey {
        ChunkKey {
            file: FileKey {
                dev: 7,
                ino: u64::MAX,
            },
            version: 0xdead_beef,
            index,
        }
    }

    #[test]
    fn chunk_names_round_trip() {
        assert_eq!(parse_chunk_name(&chunk_name(&key(3))), Some(key(3)));
        assert_eq!(parse_chunk_name(".tmp-1"), None);
        assert_eq!(parse_chunk_name("1-2-3-4"), None);
    }

    /// Written chunks come back (also after a reopen), a deleted one does
    /// not, and a write beyond the queue's byte budget is refused rather
    /// than held in memory.
    #[test]
    fn writes_read_back_and_the_queue_is_bounded() {
        let root = std::env::temp_dir().join(format!("wormhole-l2-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (reads_tx, reads) = async_channel::unbounded();
        let queue = DiskCache::open(&root)
            .expect("open the cache directory")
            .spawn(reads_tx)
            .expect("start the disk thread");
        let data = Bytes::from(vec![5u8; 1000]);
        let sum = Checksum::of(&data);
        assert!(queue.write(key(1), data.clone(), sum));
        assert!(queue.write(key(2), data.clone(), sum));
        assert!(queue.delete(key(2)));
        // Reads have their own thread: they see what the writer finished.
        queue.settle();
        assert!(queue.read(key(1)));
        assert!(queue.read(key(2)));
        assert_eq!(
            reads.recv_blocking().expect("a read result"),
            (key(1), Some((data.clone(), sum)))
        );
        assert_eq!(
            reads.recv_blocking().expect("a read result"),
            (key(2), None)
        );
        // Both done: a read now would have to wake the thread. Read on
        // this thread instead, the result is the same.
        assert!(queue.reader_idle());
        let here = queue.reader();
        assert_eq!(here.read(key(1)), (key(1), Some((data.clone(), sum))));
        assert_eq!(here.read(key(2)), (key(2), None));
        here.hand_over(here.read(key(1)));
        assert_eq!(
            reads.recv_blocking().expect("a handed-over result"),
            (key(1), Some((data.clone(), sum)))
        );

        // Fill the budget from this side: the thread is not draining
        // bytes we pretend are queued.
        queue.queued.store(QUEUED_BYTES - 999, Ordering::Relaxed);
        assert!(!queue.write(key(3), data.clone(), sum), "over budget");
        queue.queued.store(0, Ordering::Relaxed);
        drop(queue);

        let reopened = DiskCache::open(&root).expect("reopen");
        assert_eq!(reopened.found, vec![(key(1), 1000)]);
        std::fs::remove_dir_all(&root).expect("clean up");
    }
}
