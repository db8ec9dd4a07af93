//! What the client core takes and gives: its configuration, the kernel's
//! operations and their answers, and the outputs the shell carries out.

use crate::cache::{CacheConfig, ChunkKey, ReadAheadConfig};
use crate::conn::{ConnConfig, DisconnectReason};
use crate::proto::{
    Attr, ByteRange, Checksum, ClientMessage, Errno, FileKind, LockKind, Name, OpenFor, Owner,
    RangeHeld, SetAttr, StatFs, XattrSet,
};
use crate::vfs::Ino;
use crate::write::WriteConfig;
use bytes::Bytes;
use std::time::Duration;

#[allow(unused_imports)] // for doc links
use super::ClientCore;

/// Timing and bounds of the client.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// The connection machine.
    pub conn: ConnConfig,
    /// The cache.
    pub cache: CacheConfig,
    /// Read-ahead.
    pub read_ahead: ReadAheadConfig,
    /// Write transactions.
    pub write: WriteConfig,
    /// A request unanswered for this long fails with ETIMEDOUT.
    pub request_timeout: Duration,
    /// Requests waiting for a connection at most; more fail with EAGAIN.
    pub max_queued: usize,
    /// Inodes in the table at most.
    pub max_inodes: usize,
    /// Entries of one directory listing at most (larger: EFBIG).
    pub max_dir_entries: usize,
    /// Take directory leases where files are being created, and answer
    /// those creates without a round trip (docs/filesystem.md,
    /// "Asynchronous directory operations").
    pub leases: bool,
    /// When the connection machine has given up on a host that may come
    /// back (it went away or said goodbye; not a refused ticket, not our
    /// own disconnect), connect again this long after, and again after
    /// every failed try: a mount outlives a host that is down for an
    /// hour. Requests in between fail at once with ENOTCONN (during a
    /// try, they wait for its outcome; a kernel request brings the next
    /// try forward to now). `None` stays disconnected.
    pub redial: Option<Duration>,
    /// The host is unreachable for now (see `offline.rs`) once nothing at
    /// all was heard from it for this long while a request waited (a
    /// `Ping` goes out at a third of it, so a slow disk is not mistaken
    /// for a partition): what the cache holds answers, even past its TTL.
    pub unreachable_after: Duration,
    /// While the host is unreachable, a kernel request the cache cannot
    /// answer fails with ETIMEDOUT this long after it was made (or after
    /// the host went quiet, if that was later).
    pub unreachable_wait: Duration,
    /// The local user the host's user is shown as, when the host acts
    /// as one user for all its clients (`client::owners`); `None`
    /// shows the host's ids as they are.
    pub local_user: Option<Owner>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            conn: ConnConfig::default(),
            cache: CacheConfig::default(),
            read_ahead: ReadAheadConfig::default(),
            write: WriteConfig::default(),
            request_timeout: Duration::from_secs(60),
            max_queued: 4096,
            max_inodes: 1 << 20,
            max_dir_entries: 1 << 20,
            leases: true,
            redial: Some(Duration::from_secs(30)),
            unreachable_after: Duration::from_secs(3),
            unreachable_wait: Duration::from_secs(10),
            local_user: None,
        }
    }
}

/// A kernel request, numbered by the shell (FUSE's `unique`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Req(pub u64);

/// A file handle given to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fh(pub u64);

/// What a [`Op::Allocate`] asks for (`fallocate(2)`'s modes that
/// Wormhole serves; the others are EOPNOTSUPP at the mount).
///
/// Space is not reserved on the host's disk: a commit writes a new
/// version of the file whole, so a reservation made on the old one would
/// not carry over. What each mode does to the file's *content and size*
/// is done exactly, through the file's write transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocate {
    /// Mode 0 (`posix_fallocate`): the file grows to the range's end if
    /// it is shorter (the new bytes read as zeros).
    Extend,
    /// `FALLOC_FL_KEEP_SIZE` alone: nothing changes.
    KeepSize,
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`: the range's bytes
    /// within the file read as zeros; the size stays.
    PunchHole,
    /// `FALLOC_FL_ZERO_RANGE`: the range reads as zeros; the file grows
    /// to its end unless `keep_size`.
    ZeroRange {
        /// `FALLOC_FL_KEEP_SIZE` too.
        keep_size: bool,
    },
}

/// A kernel file operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Find `name` in `parent`.
    Lookup {
        /// Directory.
        parent: Ino,
        /// Name.
        name: Name,
    },
    /// Attributes.
    GetAttr {
        /// The inode.
        ino: Ino,
    },
    /// Change attributes (a size change is a write).
    SetAttr {
        /// The inode.
        ino: Ino,
        /// The changes.
        set: SetAttr,
    },
    /// Directory entries from position `offset` (0 = start).
    ReadDir {
        /// The directory.
        ino: Ino,
        /// Entries to skip.
        offset: u64,
    },
    /// Open a file.
    Open {
        /// The file.
        ino: Ino,
        /// What for (the host refuses at once what it would refuse to
        /// write later).
        mode: OpenFor,
        /// `O_TRUNC`: the file's content goes, in a transaction that
        /// commits with the handle's first flush, fsync or close (until
        /// then everyone else, and a crash, keep the old content).
        truncate: bool,
    },
    /// Read.
    Read {
        /// The handle.
        fh: Fh,
        /// Offset.
        offset: u64,
        /// Bytes at most.
        size: u32,
    },
    /// Write (buffered; committed on flush, fsync or release).
    Write {
        /// The handle.
        fh: Fh,
        /// Offset.
        offset: u64,
        /// The bytes.
        data: Bytes,
        /// A program's write to a file it holds with `O_APPEND` (the
        /// kernel sends the file's flags with each write; a page written
        /// back from the page cache, or a zeroed range, is never one):
        /// it goes at the file's end, whatever `offset` says
        /// ([`crate::write::WriteTxn::append`]).
        append: bool,
    },
    /// close(2) on a descriptor: commit, report the outcome; then the
    /// closing owner's record locks on the file go, as POSIX says.
    Flush {
        /// The handle.
        fh: Fh,
        /// The kernel's lock owner closing it (the process), if known.
        owner: Option<u64>,
    },
    /// Take or release an advisory record lock (`fcntl` F_SETLK and
    /// F_SETLKW, OFD locks, `flock`), shared with every client of the
    /// host. Data follows the locks, as on NFS: the file's writes are
    /// committed first, and a lock taken drops what was cached of the
    /// file, so its holder reads every write committed before it.
    SetLock {
        /// The handle it is taken through.
        fh: Fh,
        /// The kernel's lock owner (a process, or an open file).
        owner: u64,
        /// The bytes.
        range: ByteRange,
        /// Shared or exclusive; `None` unlocks.
        kind: Option<LockKind>,
        /// Wait for it rather than fail with EAGAIN (F_SETLKW). The wait
        /// is not interruptible: FUSE through fuser passes no interrupt.
        wait: bool,
    },
    /// Which lock of another owner stops `owner` taking `kind` on
    /// `range` (F_GETLK): [`Answer::Lock`].
    GetLock {
        /// The handle.
        fh: Fh,
        /// The kernel's lock owner asking.
        owner: u64,
        /// The bytes.
        range: ByteRange,
        /// The lock it would take.
        kind: LockKind,
    },
    /// fsync(2): commit, report the outcome.
    Fsync {
        /// The handle.
        fh: Fh,
    },
    /// `copy_file_range(2)` from one open file to another of this mount:
    /// the host copies, the bytes never cross the network.
    CopyRange {
        /// The source's handle.
        fh_in: Fh,
        /// Where in the source.
        offset_in: u64,
        /// The destination's handle (open for writing).
        fh_out: Fh,
        /// Where in the destination.
        offset_out: u64,
        /// How many bytes at most.
        len: u64,
    },
    /// `fallocate(2)` on an open file. Answered [`Answer::Done`].
    Allocate {
        /// The handle (open for writing).
        fh: Fh,
        /// Where the range starts.
        offset: u64,
        /// Its length (more than zero).
        length: u64,
        /// What to do with it.
        how: Allocate,
    },
    /// The last descriptor of a handle is gone.
    Release {
        /// The handle.
        fh: Fh,
    },
    /// Create and open a file.
    Create {
        /// Directory.
        parent: Ino,
        /// Name.
        name: Name,
        /// Permission bits.
        mode: u32,
        /// The calling process's user and group: the new file's owner
        /// where the host preserves owners.
        caller: Option<Owner>,
        /// `O_EXCL`: fail with EEXIST if the name exists (otherwise an
        /// existing file is opened).
        exclusive: bool,
        /// `O_TRUNC`: an existing file that is opened loses its content,
        /// as with [`Op::Open`].
        truncate: bool,
    },
    /// Make a directory.
    Mkdir {
        /// Directory.
        parent: Ino,
        /// Name.
        name: Name,
        /// Permission bits.
        mode: u32,
        /// The calling process's user and group (as for [`Op::Create`]).
        caller: Option<Owner>,
    },
    /// Make a FIFO, a socket's name or an empty regular file (`mknod`).
    Mknod {
        /// Directory.
        parent: Ino,
        /// Name.
        name: Name,
        /// Any kind but a directory or symlink.
        kind: FileKind,
        /// Permission bits.
        mode: u32,
        /// The device, for a device node.
        rdev: u64,
        /// The calling process's user and group (as for [`Op::Create`]).
        caller: Option<Owner>,
    },
    /// Remove a file.
    Unlink {
        /// Directory.
        parent: Ino,
        /// Name.
        name: Name,
    },
    /// Remove a directory.
    Rmdir {
        /// Directory.
        parent: Ino,
        /// Name.
        name: Name,
    },
    /// Rename (replacing the target).
    Rename {
        /// Source directory.
        parent: Ino,
        /// Source name.
        name: Name,
        /// Target directory.
        new_parent: Ino,
        /// Target name.
        new_name: Name,
    },
    /// An extended attribute's value: its size if `size` is 0, else the
    /// value (ERANGE if longer than `size`).
    GetXattr {
        /// The file or directory.
        ino: Ino,
        /// The attribute's name.
        name: Vec<u8>,
        /// The caller's buffer.
        size: u32,
    },
    /// The names of the extended attributes, each NUL-ended: their size
    /// if `size` is 0, else the list (ERANGE if longer than `size`).
    ListXattr {
        /// The file or directory.
        ino: Ino,
        /// The caller's buffer.
        size: u32,
    },
    /// Set an extended attribute.
    SetXattr {
        /// The file or directory.
        ino: Ino,
        /// The attribute's name.
        name: Vec<u8>,
        /// Its value.
        value: Vec<u8>,
        /// Create, replace, or either.
        how: XattrSet,
    },
    /// Remove an extended attribute.
    RemoveXattr {
        /// The file or directory.
        ino: Ino,
        /// The attribute's name.
        name: Vec<u8>,
    },
    /// Give a file another name (a hard link).
    Link {
        /// The file.
        ino: Ino,
        /// Directory of the new name.
        new_parent: Ino,
        /// The new name.
        new_name: Name,
    },
    /// Make a symlink.
    Symlink {
        /// Directory.
        parent: Ino,
        /// Name.
        name: Name,
        /// Target text.
        target: Vec<u8>,
        /// The calling process's user and group (as for [`Op::Create`]).
        caller: Option<Owner>,
    },
    /// A symlink's target.
    Readlink {
        /// The symlink.
        ino: Ino,
    },
    /// File system statistics.
    Statfs,
    /// fsyncdir(2): everything the host applied so far made durable (a
    /// directory's entries are among it).
    SyncAll,
}

impl Op {
    /// An open for reading.
    pub fn open(ino: Ino) -> Op {
        Op::Open {
            ino,
            mode: OpenFor::Read,
            truncate: false,
        }
    }
}

/// One directory entry for the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirItem {
    /// Its inode.
    pub ino: Ino,
    /// The offset of the entry after it (what the kernel passes back).
    pub next: u64,
    /// Its kind.
    pub kind: FileKind,
    /// Its name.
    pub name: ListedName,
    /// Its attributes (for `.` and `..`, what the cache last held: the
    /// kernel uses neither their attributes nor a reference to them).
    pub attr: Attr,
    /// How long the kernel may keep the entry and its attributes (for a
    /// readdirplus answer, which hands the kernel both).
    pub ttl: Duration,
}

/// A name in a listing: every directory lists itself and its parent
/// first, as on a local disk, then its entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListedName {
    /// `.`: the directory itself.
    Dot,
    /// `..`: its parent (the root's is the root).
    DotDot,
    /// An entry.
    Entry(Name),
}

impl ListedName {
    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ListedName::Dot => b".",
            ListedName::DotDot => b"..",
            ListedName::Entry(n) => n.as_bytes(),
        }
    }

    /// The entry's name; `None` for `.` and `..`.
    pub fn entry(&self) -> Option<&Name> {
        match self {
            ListedName::Entry(n) => Some(n),
            ListedName::Dot | ListedName::DotDot => None,
        }
    }
}

/// A successful answer to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Lookup, Mkdir, Symlink: an entry.
    Entry {
        /// Its inode (one lookup reference taken).
        ino: Ino,
        /// Its attributes.
        attr: Attr,
        /// How long the kernel may cache entry and attributes.
        ttl: Duration,
    },
    /// Create: an entry and an open handle.
    Created {
        /// Its inode.
        ino: Ino,
        /// Its attributes.
        attr: Attr,
        /// How long the kernel may cache them.
        ttl: Duration,
        /// The handle.
        fh: Fh,
    },
    /// GetAttr, SetAttr.
    Attr {
        /// The attributes.
        attr: Attr,
        /// How long the kernel may cache them.
        ttl: Duration,
    },
    /// ReadDir: entries from the requested offset (empty at the end).
    Dir(Vec<DirItem>),
    /// Open.
    Opened {
        /// The handle.
        fh: Fh,
        /// The file is unchanged since the kernel last cached it.
        keep_cache: bool,
    },
    /// Read.
    Data(Bytes),
    /// Write: bytes accepted.
    Written(u32),
    /// Readlink.
    Link(Vec<u8>),
    /// Statfs.
    StatFs(StatFs),
    /// GetXattr, ListXattr with a buffer: the value or list.
    Xattr(Vec<u8>),
    /// GetXattr, ListXattr without a buffer: the size one needs.
    XattrSize(u32),
    /// GetLock: the lock in the way, or `None`.
    Lock(Option<RangeHeld>),
    /// Done.
    Done,
}

/// What the client reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Connected (again); `resumed` if the host kept our session.
    Connected {
        /// Whether the session was resumed.
        resumed: bool,
    },
    /// The session moved to a better path ([`super::ClientCore::move_path`]);
    /// `resumed` if the host kept it (else, as after
    /// [`ClientEvent::Connected`] with `resumed: false`, inodes are
    /// re-bound).
    Moved {
        /// Whether the session was resumed.
        resumed: bool,
    },
    /// The connection was lost; reconnecting.
    Lost,
    /// The host has not answered for [`ClientConfig::unreachable_after`]
    /// although the connection is up (a partition, or a host that
    /// stopped): cached files answer, other requests fail after
    /// [`ClientConfig::unreachable_wait`].
    Unreachable,
    /// The host answers again after [`ClientEvent::Unreachable`].
    Reachable,
    /// A reconnect attempt is scheduled.
    Retrying {
        /// Attempt number.
        attempt: u32,
        /// Delay before it.
        delay: Duration,
    },
    /// A file this mount created under a directory lease, and answered
    /// the program for, was refused by the host after every handle on it
    /// had closed (a local program on the host took the name, or its disk
    /// was full): nobody was left to report it to.
    CreateLost {
        /// Its name.
        name: Name,
        /// Why.
        errno: Errno,
    },
    /// An unlink this client answered under a directory lease was not
    /// applied by the host (another client's lock on the file, a disk
    /// error, or a host restart before it was confirmed): the name may
    /// still be there.
    RemoveLost {
        /// The name.
        name: Name,
        /// Why.
        errno: Errno,
    },
    /// A directory's mode or times this client set under its lease, and
    /// answered the program for, were not applied by the host (another
    /// client's lock on it, a disk error, or a host restart before it
    /// was confirmed).
    AttrLost {
        /// The directory's name (`None`: the shared folder itself).
        name: Option<Name>,
        /// Why.
        errno: Errno,
    },
    /// Given up: every request fails with ENOTCONN until the next
    /// connect.
    Disconnected {
        /// Why the connection machine gave up.
        reason: DisconnectReason,
        /// When the client connects again by itself ([`ClientConfig::redial`]);
        /// `None`: not until `connect`.
        redial_in: Option<Duration>,
    },
}

/// What the client asks the shell to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOutput {
    /// Answer a kernel request.
    Reply {
        /// The request.
        req: Req,
        /// The answer.
        result: Result<Answer, Errno>,
    },
    /// Send a message to the host.
    Send(ClientMessage),
    /// Open a transport to the host; report it with
    /// [`ClientCore::transport_established`] or
    /// [`ClientCore::transport_lost`].
    OpenTransport,
    /// Close the transport.
    CloseTransport,
    /// Store a chunk in the disk cache.
    L2Write {
        /// The chunk.
        key: ChunkKey,
        /// Its bytes.
        data: Bytes,
        /// Their checksum.
        checksum: Checksum,
    },
    /// Delete a chunk from the disk cache.
    L2Delete {
        /// The chunk.
        key: ChunkKey,
    },
    /// Read a chunk from the disk cache and report it with
    /// [`ClientCore::l2_loaded`] or [`ClientCore::l2_read_failed`].
    L2Read {
        /// The chunk.
        key: ChunkKey,
    },
    /// The kernel's cached data or attributes of `ino` are out of date.
    InvalidateInode {
        /// The inode.
        ino: Ino,
    },
    /// The kernel's cached entry `parent/name` is out of date.
    InvalidateEntry {
        /// The directory.
        parent: Ino,
        /// The name.
        name: Name,
    },
    /// A connection change.
    Event(ClientEvent),
}
