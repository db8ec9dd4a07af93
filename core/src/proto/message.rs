//! The messages of the file protocol.

#[cfg(doc)]
use super::CHUNK_SIZE;
use super::{Errno, MAX_WRITE_PIECE, Name};
use crate::codec::{self, CodecError, MAX_MESSAGE_SIZE, WireMessage};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Correlates a reply with its request; chosen by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RequestId(pub u64);

/// A file, directory or symlink as the host names it for one host run.
/// The root is always [`NodeId::ROOT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NodeId(pub u64);

impl NodeId {
    /// The shared folder itself.
    pub const ROOT: NodeId = NodeId(1);
}

/// A file's identity on the host's disk (device and inode number): stable
/// across host restarts and renames, so disk caches key on it rather than
/// on node or inode numbers that change between sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FileKey {
    /// Device number.
    pub dev: u64,
    /// Inode number on that device.
    pub ino: u64,
}

/// What an open is for: the host checks at open what it would refuse
/// later, so that a file the host's user may not change fails its
/// `open`, not its `close`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum OpenFor {
    /// Reading only.
    #[default]
    Read,
    /// Writing anywhere in the file.
    Write,
    /// Writing at its end only (`O_APPEND`; an append-only file allows
    /// it).
    Append,
}

/// How a [`Request::SetXattr`] treats an attribute already there (or
/// not), as `setxattr(2)`'s flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum XattrSet {
    /// Create it or replace it.
    #[default]
    Either,
    /// Only create it: EEXIST if it is there (`XATTR_CREATE`).
    Create,
    /// Only replace it: ENODATA if it is not (`XATTR_REPLACE`).
    Replace,
}

/// What kind of node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by the host).
    Symlink,
    /// A named pipe. Its data never crosses the network: a client's
    /// kernel opens it locally, the host never opens it
    /// (`docs/permissions.md`, "Special files").
    Fifo,
    /// A Unix socket's name, likewise opened by nobody but local programs.
    Socket,
    /// A character device node: made and shown only by a host that allows
    /// them (`--allow-device-nodes`); opened by each client's kernel as
    /// that client's own device, never by the host.
    CharDevice,
    /// A block device node, as a character device node.
    BlockDevice,
}

impl FileKind {
    /// A FIFO, socket or device node: a name and attributes only, its
    /// I/O local to each machine.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            FileKind::Fifo | FileKind::Socket | FileKind::CharDevice | FileKind::BlockDevice
        )
    }

    /// A device node.
    pub fn is_device(self) -> bool {
        matches!(self, FileKind::CharDevice | FileKind::BlockDevice)
    }

    /// Whether truncate(2) may set its size: only a regular file's; a
    /// special file's is EINVAL, a directory's or symlink's EISDIR.
    pub fn truncatable(self) -> Result<(), crate::proto::Errno> {
        match self {
            FileKind::File => Ok(()),
            FileKind::Dir | FileKind::Symlink => Err(crate::proto::Errno::IsDir),
            _ => Err(crate::proto::Errno::Inval),
        }
    }
}

/// A point in wall-clock time, as file systems store it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Timestamp {
    /// The time `n` nanoseconds later.
    pub fn plus_nanos(self, n: u32) -> Timestamp {
        let nanos = u64::from(self.nanos) + u64::from(n);
        Timestamp {
            secs: self.secs.saturating_add((nanos / 1_000_000_000) as i64),
            nanos: (nanos % 1_000_000_000) as u32,
        }
    }
}

/// A node's attributes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Attr {
    /// The node.
    pub node: NodeId,
    /// Its stable identity on the host's disk.
    pub key: FileKey,
    /// File, directory or symlink.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The device a device node stands for (else 0).
    pub rdev: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last content change.
    pub mtime: Timestamp,
    /// Last metadata change.
    pub ctime: Timestamp,
    /// Names the content: changes whenever the file's identity, size or
    /// mtime do (not on chmod or rename). Equal versions mean cached data
    /// is still good.
    pub version: u64,
}

/// How a time attribute is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum SetTime {
    /// The host's current time.
    Now,
    /// This time.
    At(Timestamp),
}

/// Attribute changes; `None` leaves an attribute as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SetAttr {
    /// Truncate or extend to this size.
    pub size: Option<u64>,
    /// New permission bits.
    pub mode: Option<u32>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// New owner (chown).
    pub uid: Option<u32>,
    /// New group (chown, chgrp).
    pub gid: Option<u32>,
}

impl SetAttr {
    /// Whether it changes the owner or the group.
    pub fn chowns(&self) -> bool {
        self.uid.is_some() || self.gid.is_some()
    }
}

/// One directory entry, with its attributes (readdirplus).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DirEntry {
    /// The entry's name.
    pub name: Name,
    /// Its attributes.
    pub attr: Attr,
}

/// File system statistics of the shared folder's file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
}

/// What a host announces in [`Reply::HelloAck`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Limits {
    /// Bytes per data chunk.
    pub chunk_size: u32,
    /// Entries per directory page.
    pub max_dir_page: u32,
    /// Lifetime of a granted lock, in milliseconds.
    pub lock_ttl_ms: u32,
    /// The host refuses every change (EROFS).
    pub read_only: bool,
    /// Whose the files are ([`Owners`]).
    pub owners: Owners,
}

/// A user and group, as the client's kernel numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// How a host treats file owners (`docs/permissions.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Owners {
    /// The host acts for every client as one user, this one (the
    /// ticket is the capability, as an ssh login is for sshfs): a mount
    /// shows files of this user and group as its own user's, and no
    /// client may give a file to anyone else.
    HostUser {
        /// The host's user id.
        uid: u32,
        /// The host's group id.
        gid: u32,
    },
    /// Owners are the clients' own ids, unmapped, and a client may
    /// change them (`wormhole host --preserve-owners`, as root).
    Preserved,
}

impl Owners {
    /// Whether a host that treats owners so serves the extended
    /// attribute `name`: the `user.` namespace always; `trusted.` and
    /// `security.` where it preserves owners (it runs as root for its
    /// clients, as NFS with `no_root_squash`); never `system.` (ACLs,
    /// which the host's kernel would apply to the host's own checks).
    pub fn serves_xattr(self, name: &[u8]) -> bool {
        name.starts_with(b"user.")
            || (self == Owners::Preserved
                && name != super::CAPABILITY_XATTR
                && (name.starts_with(b"trusted.") || name.starts_with(b"security.")))
    }
}

/// One client session at the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SessionId(pub [u8; 16]);

/// A granted lock: 128 random bits, unguessable, and a fencing token: the
/// host accepts a change carrying it only while this exact grant is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct LockToken(pub [u8; 16]);

/// Shared (many readers) or exclusive (one writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum LockKind {
    /// Compatible with other shared locks.
    Shared,
    /// Compatible with nothing.
    Exclusive,
}

/// The bytes an advisory record lock covers (`fcntl`'s `struct flock`,
/// as FUSE gives it): `start..=end`, both included. The kernel's
/// `OFFSET_MAX` (`i64::MAX`) as the end reaches past the end of the file
/// however it grows; a `flock` is [`ByteRange::WHOLE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ByteRange {
    /// The first byte.
    pub start: u64,
    /// The last byte.
    pub end: u64,
}

impl ByteRange {
    /// Every byte, now and later (`flock`, or the release at close), as
    /// the kernel says it: up to `OFFSET_MAX`, which it accepts back in
    /// an F_GETLK answer (a larger end would be EIO).
    pub const WHOLE: ByteRange = ByteRange {
        start: 0,
        end: i64::MAX as u64,
    };

    /// Whether the two share a byte.
    pub fn overlaps(&self, other: &ByteRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The parts of this range that none of `cut` overlaps, in order.
    pub fn minus(self, cut: &[ByteRange]) -> Vec<ByteRange> {
        let mut parts = vec![self];
        for c in cut {
            parts = parts
                .into_iter()
                .flat_map(|p| {
                    if !p.overlaps(c) {
                        return vec![p];
                    }
                    let mut left = Vec::new();
                    if p.start < c.start {
                        left.push(ByteRange {
                            start: p.start,
                            end: c.start - 1,
                        });
                    }
                    if p.end > c.end {
                        left.push(ByteRange {
                            start: c.end + 1,
                            end: p.end,
                        });
                    }
                    left
                })
                .collect();
        }
        parts
    }
}

/// A record lock another owner holds ([`Reply::LockTest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RangeHeld {
    /// The bytes it covers.
    pub range: ByteRange,
    /// Shared (a read lock) or exclusive (a write lock).
    pub kind: LockKind,
}

/// What a lock covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum LockScope {
    /// One file.
    File(NodeId),
    /// A directory's entries (not its children's contents).
    Directory(NodeId),
    /// A directory and everything beneath it.
    Subtree(NodeId),
}

/// An open file at the host: it keeps the file readable through this
/// handle even after the file is unlinked, as POSIX does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HandleId(pub u64);

/// What a read names: a node, or an open handle (which outlives an
/// unlink).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum FileRef {
    /// By node.
    Node(NodeId),
    /// By open handle.
    Handle(HandleId),
}

/// A write transaction at the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TxnId(pub u64);

/// What an [`HostMessage::Invalidate`] says changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Invalidation {
    /// Attributes only.
    Attr,
    /// Content (and so attributes).
    Data,
    /// A directory's entries.
    Entries,
    /// The node is gone.
    Gone,
    /// Content (and so attributes), by a new file put in the old one's
    /// place (a commit renames its new version over the file): a handle
    /// open on the old file keeps reading it, as on a local disk.
    Replaced,
}

/// An operation a lease holder answered itself ([`Request::Apply`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum LeaseOp {
    /// A new regular file with its whole content, made as one inode and
    /// put at its name only if the name is free (EEXIST otherwise: a
    /// local program on the host took it meanwhile).
    CreateFile {
        /// The node id the holder gave it, from one of its ranges, each
        /// higher than the last it used from that range.
        node: NodeId,
        /// Its name in the leased directory.
        name: Name,
        /// Permission bits.
        mode: u32,
        /// Whose it is, where the host preserves owners (else `None`).
        owner: Option<Owner>,
        /// Access and modification times, if set (else the host's now).
        times: SetAttr,
        /// The content.
        #[cfg_attr(feature = "arbitrary", arbitrary(with = arbitrary_bytes))]
        #[serde(with = "codec::shared")]
        data: Bytes,
    },
    /// Remove the name `name`, which the holder saw naming `node`, a file
    /// that is not a directory (an unlink the holder answered itself).
    /// Only if it still names `node`'s file: ESTALE if another file took
    /// the name (applied after the lease was lost, the unlink must not
    /// remove a file made since), ENOENT if none has it. The result is
    /// the node's attributes with its link count less one.
    Unlink {
        /// The node the name held when the holder answered.
        node: NodeId,
        /// Its name in the leased directory.
        name: Name,
    },
    /// Remove the empty directory `name`, which the holder saw naming
    /// `node` and held the lease of (an `rmdir` the holder answered
    /// itself, sent once that directory's own stream is applied). Only
    /// if it still names `node`'s directory: ESTALE if another took the
    /// name, ENOENT if none has it, ENOTEMPTY if something was made in it
    /// meanwhile. The result is the directory's attributes.
    Rmdir {
        /// The directory the name held when the holder answered.
        node: NodeId,
        /// Its name in the leased directory.
        name: Name,
    },
    /// Set the mode and times of the leased directory itself (a `chmod`
    /// or `utimensat` the holder answered itself), after what precedes
    /// it in the stream: tar sets a directory's times once it has made
    /// its files, and they must stay as it set them. Neither size nor
    /// owner is set this way (EINVAL). The result is the directory's
    /// attributes.
    SetAttr {
        /// The mode and times to set.
        set: SetAttr,
    },
}

/// Node ids reserved for one lease: `first` and the `count - 1` after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NodeRange {
    /// The first id.
    pub first: NodeId,
    /// How many.
    pub count: u32,
}

/// A directory lease granted ([`Reply::Leased`], or with a new
/// directory in [`Reply::Made`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct LeaseGrant {
    /// Its fencing token (a lock's: refreshed and released as one).
    pub token: LockToken,
    /// Time until it expires unless refreshed, in milliseconds.
    pub ttl_ms: u32,
    /// The node ids the holder gives the files it creates.
    pub nodes: NodeRange,
}

impl NodeRange {
    /// Whether `node` is in the range.
    pub fn contains(&self, node: NodeId) -> bool {
        node.0 >= self.first.0 && node.0 - self.first.0 < u64::from(self.count)
    }
}

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Request {
    /// First request of a connection: protocol version and proof of the
    /// ticket secret (bound to the TLS session, so it cannot be replayed);
    /// `resume` asks to restore an earlier session.
    Hello {
        /// The client's protocol version.
        version: u16,
        /// Keyed hash of the TLS exporter secret under the ticket secret.
        proof: [u8; 32],
        /// A session to restore after a reconnect.
        resume: Option<SessionId>,
    },
    /// Find `name` in `parent`.
    Lookup {
        /// Directory.
        parent: NodeId,
        /// Entry name.
        name: Name,
    },
    /// Attributes of a node.
    GetAttr {
        /// The node.
        node: NodeId,
    },
    /// Change attributes (a size change is a write: it needs the file's
    /// exclusive lock if another session holds any lock on it).
    SetAttr {
        /// The node.
        node: NodeId,
        /// The changes.
        set: SetAttr,
        /// Fencing token of a lock covering the node, if held.
        token: Option<LockToken>,
    },
    /// One page of a directory, from `cookie` (0 = the start).
    ReadDir {
        /// The directory.
        dir: NodeId,
        /// Where to continue: the `next` of the previous page.
        cookie: u64,
    },
    /// Open a file; the handle keeps it readable after an unlink.
    Open {
        /// The file.
        node: NodeId,
        /// Reading, or writing too (checked now: a refusal fails the open).
        mode: OpenFor,
    },
    /// Close a handle from [`Request::Open`].
    Close {
        /// The handle.
        handle: HandleId,
    },
    /// Read up to `len` (≤ [`CHUNK_SIZE`]) bytes at `offset`.
    Read {
        /// The file, by node or by open handle.
        file: FileRef,
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u32,
    },
    /// Create a regular file. Answered with its attributes, or, with
    /// `open`, as [`Request::Open`] for reading is: the handle a new file
    /// needs comes with it, one round trip instead of two.
    Create {
        /// Directory.
        parent: NodeId,
        /// New name.
        name: Name,
        /// Permission bits.
        mode: u32,
        /// Whose it is, where the host preserves owners (else `None`).
        owner: Option<Owner>,
        /// Fail with EEXIST if it exists (O_EXCL).
        exclusive: bool,
        /// Open it too ([`Reply::Opened`]).
        open: bool,
    },
    /// Create a directory.
    Mkdir {
        /// Directory.
        parent: NodeId,
        /// New name.
        name: Name,
        /// Permission bits.
        mode: u32,
        /// Whose it is, where the host preserves owners (else `None`).
        owner: Option<Owner>,
        /// Lease the new directory to this session too, as
        /// [`Request::Lease`] would, if it can be granted at once, the
        /// directory is still empty once it is, the lease was not recalled
        /// meanwhile and the reply does not wait for the disk (the lease
        /// then comes in [`Reply::Made`]; without it the directory is made
        /// all the same).
        /// Files usually follow a new directory: this saves asking for
        /// the lease and reading its listing, two round trips.
        lease: bool,
    },
    /// Create a FIFO, a socket's name or an empty regular file
    /// (`mknod`; device nodes are not made).
    Mknod {
        /// Directory.
        parent: NodeId,
        /// New name.
        name: Name,
        /// Any kind but a directory or symlink (a device node only where
        /// the host allows them).
        kind: FileKind,
        /// Permission bits.
        mode: u32,
        /// The device, for a device node.
        rdev: u64,
        /// Whose it is, where the host preserves owners (else `None`).
        owner: Option<Owner>,
    },
    /// Remove a non-directory.
    Unlink {
        /// Directory.
        parent: NodeId,
        /// Entry name.
        name: Name,
    },
    /// Remove an empty directory.
    Rmdir {
        /// Directory.
        parent: NodeId,
        /// Entry name.
        name: Name,
    },
    /// Rename, replacing an existing target as POSIX rename does.
    Rename {
        /// Source directory.
        parent: NodeId,
        /// Source name.
        name: Name,
        /// Target directory.
        new_parent: NodeId,
        /// Target name.
        new_name: Name,
    },
    /// Create a symbolic link (its target is stored, never followed).
    Symlink {
        /// Directory.
        parent: NodeId,
        /// Link name.
        name: Name,
        /// Link target, at most [`super::MAX_SYMLINK_LEN`] bytes.
        target: Vec<u8>,
        /// Whose it is, where the host preserves owners (else `None`).
        owner: Option<Owner>,
    },
    /// A symlink's target.
    Readlink {
        /// The symlink.
        node: NodeId,
    },
    /// File system statistics.
    Statfs,
    /// Take a lock; with `wait` the request queues (FIFO, with a timeout)
    /// instead of failing with EAGAIN.
    AcquireLock {
        /// What to lock.
        scope: LockScope,
        /// Shared or exclusive.
        kind: LockKind,
        /// Queue instead of failing at once.
        wait: bool,
    },
    /// Extend a held lock by another lifetime.
    RefreshLock {
        /// The lock.
        token: LockToken,
    },
    /// Give a lock back.
    ReleaseLock {
        /// The lock.
        token: LockToken,
    },
    /// Start a write transaction on a file under an exclusive lock.
    BeginWrite {
        /// The file.
        node: NodeId,
        /// The exclusive lock's token.
        token: LockToken,
        /// The content version (`Attr::version`) the writes build on: the
        /// host refuses the transaction with ESTALE if the file holds any
        /// other now, and its commit if the file changes before it. `None`
        /// for a transaction that first truncates the file to nothing,
        /// whose result does not depend on what was there.
        base: Option<u64>,
        /// Set when the writes only add bytes at or past this offset, the
        /// end of `base` (`O_APPEND`). If the file holds another version
        /// by then, the host does not refuse the transaction: it stages
        /// from that version and moves every later piece, and the
        /// commit's size, by the difference of the two ends, so an
        /// append lands at the file's end and never over another
        /// writer's append. A piece below this offset, a truncate or a
        /// copy in a transaction so moved is refused (ESTALE).
        append_from: Option<u64>,
    },
    /// New content for a range of the file, starting in chunk `index`
    /// and running on into the chunks after it. Pieces of one transaction
    /// never overlap until acknowledged, so they may be applied in any
    /// order.
    WriteChunk {
        /// The transaction.
        txn: TxnId,
        /// Chunk index (byte offset / [`CHUNK_SIZE`]) where `data` starts.
        index: u64,
        /// Where in that chunk `data` starts: less than [`CHUNK_SIZE`].
        offset: u32,
        /// At most [`MAX_WRITE_PIECE`] bytes.
        #[cfg_attr(feature = "arbitrary", arbitrary(with = arbitrary_bytes))]
        #[serde(with = "codec::shared")]
        data: Bytes,
    },
    /// Cut (or extend with zeros) the staged content to `size`, between
    /// the chunks written before and after it (a truncate during a write).
    TruncateWrite {
        /// The transaction.
        txn: TxnId,
        /// New staged size.
        size: u64,
    },
    /// Apply the transaction atomically; the file ends `size` bytes long.
    /// Answered once the new content is visible to everyone (durable only
    /// by the next [`Request::Sync`] or the host's group commit).
    CommitWrite {
        /// The transaction.
        txn: TxnId,
        /// Final size.
        size: u64,
        /// Mode and times set on the file while it was being written,
        /// applied to the new content before it replaces the old (`size`
        /// is ignored: the commit's own size stands).
        set: SetAttr,
    },
    /// Drop the transaction; the file keeps its old content.
    AbortWrite {
        /// The transaction.
        txn: TxnId,
    },
    /// The client is leaving; its locks and transactions end now.
    Goodbye,
    /// Are you there? Answered `Done` at once, without touching the disk:
    /// a client that has heard nothing for a while tells a slow disk from
    /// an unreachable host by it.
    Ping,
    /// Make durable everything the host applied before it received this
    /// (fsync, fdatasync, fsyncdir): answered `Done` once its disk says so,
    /// or with the error the disk gave.
    Sync,
    /// Copy `len` bytes of `from` at `from_offset` into the staged content
    /// at `offset`, on the host (a reflink where its file system can):
    /// `copy_file_range` within one mount, without the bytes crossing the
    /// network. At most [`MAX_COPY`](super::MAX_COPY) bytes; fewer in the source is an
    /// error (EIO), since the client promised the kernel all of them.
    /// (Added after `Sync`: new variants go last, so the wire bytes of
    /// the others stay as they were.)
    CopyWrite {
        /// The transaction.
        txn: TxnId,
        /// The file copied from (its open handle: the version the client
        /// read; or its node).
        from: FileRef,
        /// Where in it.
        from_offset: u64,
        /// Where in the staged content.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// A whole small rewrite in one round trip: the host takes the file's
    /// exclusive lock (without waiting: EAGAIN if another holds it), stages
    /// from the content version `base` (ESTALE if the file holds another),
    /// cuts the staged content to `truncate` if given, writes `data` at
    /// `offset`, commits with `size` and releases the lock. What
    /// AcquireLock, BeginWrite, TruncateWrite, WriteChunk, CommitWrite and
    /// ReleaseLock do, answered like CommitWrite. `tag` names it within
    /// the session: sent again after a lost reply, it gets the answer
    /// instead of running twice.
    WriteWhole {
        /// The file.
        node: NodeId,
        /// The content version the writes build on (`None`: they replace
        /// all of it).
        base: Option<u64>,
        /// Appends only, from this offset: moved to the file's end if it
        /// holds another version, as for [`Request::BeginWrite`].
        append_from: Option<u64>,
        /// The client's name for this write.
        tag: u64,
        /// Cut or extend the content to this size first.
        truncate: Option<u64>,
        /// Where `data` goes.
        offset: u64,
        /// At most [`MAX_WRITE_PIECE`] bytes.
        #[cfg_attr(feature = "arbitrary", arbitrary(with = arbitrary_bytes))]
        #[serde(with = "codec::shared")]
        data: Bytes,
        /// The file's size when done.
        size: u64,
        /// Mode and times to give the new content, as with
        /// [`Request::CommitWrite`].
        set: SetAttr,
    },
    /// Take a lease on a directory: an exclusive [`LockScope::Directory`]
    /// lock (refreshed and released as any lock, by its token) and a
    /// range of node ids only this session may give the files it creates
    /// there. While the lease lives, the holder answers creates in the
    /// directory itself and sends them in [`Request::Apply`] batches;
    /// another session's request that touches the directory's entries
    /// waits while the host sends [`HostMessage::Recall`] to the holder,
    /// and runs once the lease is released (docs/filesystem.md,
    /// "Asynchronous directory operations"). Never waits: EAGAIN if a
    /// lock there is held. Answered [`Reply::Leased`].
    Lease {
        /// The directory.
        dir: NodeId,
    },
    /// Operations a lease holder answered itself in `dir`, to be applied
    /// in order. Their node ids come from ranges this session was given
    /// with its leases; a range outlives a lease that expired (a holder
    /// cut off past its lease still sends what it answered, and a name
    /// taken meanwhile is EEXIST, never overwritten) and ends when the
    /// holder releases the lease or the session ends. Waits, as any
    /// change of the directory's entries, while another session holds a
    /// lease there. `tag` names the batch within the session: sent again
    /// after a lost reply, it gets the answer instead of running twice.
    /// Answered [`Reply::Applied`], one result per operation.
    Apply {
        /// The directory.
        dir: NodeId,
        /// The batch's name within the session.
        tag: u64,
        /// The operations, in the order the holder answered them.
        ops: Vec<LeaseOp>,
    },
    /// An extended attribute's value, whole (at most
    /// [`super::MAX_XATTR_SIZE`] bytes): [`Reply::Xattr`], or ENODATA.
    /// Only the `user.` namespace, and `trusted.` and `security.` where
    /// the host preserves owners, are served.
    GetXattr {
        /// The file or directory.
        node: NodeId,
        /// The attribute's name, namespace included.
        name: Vec<u8>,
    },
    /// The names of a node's extended attributes in the namespaces the
    /// host serves, each ended by a NUL: [`Reply::Xattr`].
    ListXattr {
        /// The file or directory.
        node: NodeId,
    },
    /// Set an extended attribute: answered with the node's new
    /// attributes ([`Reply::Attr`]; its ctime moved).
    SetXattr {
        /// The file or directory.
        node: NodeId,
        /// The attribute's name, namespace included.
        name: Vec<u8>,
        /// Its value, at most [`super::MAX_XATTR_SIZE`] bytes.
        value: Vec<u8>,
        /// Create, replace, or either.
        how: XattrSet,
    },
    /// Remove an extended attribute: [`Reply::Attr`], or ENODATA.
    RemoveXattr {
        /// The file or directory.
        node: NodeId,
        /// The attribute's name, namespace included.
        name: Vec<u8>,
    },
    /// Take an advisory record lock (`fcntl` F_SETLK/F_SETLKW, OFD
    /// locks, `flock`) on `range` for `owner` (the kernel's lock owner:
    /// a process's, an open file's): [`Reply::Done`] once held. An
    /// owner's new lock replaces its own locks on those bytes, as POSIX
    /// says. Held by another owner of any client: EAGAIN, or with `wait`
    /// the reply comes when the lock is granted (EDEADLK if waiting would
    /// deadlock). Locks go when the owner unlocks them, or with the
    /// session.
    SetLock {
        /// The file.
        node: NodeId,
        /// The kernel's lock owner, unique within this session.
        owner: u64,
        /// The bytes.
        range: ByteRange,
        /// Shared (read) or exclusive (write).
        kind: LockKind,
        /// Wait for it (F_SETLKW) rather than fail with EAGAIN.
        wait: bool,
    },
    /// Release `owner`'s record locks on `range` (F_UNLCK; the whole file
    /// at close): [`Reply::Done`].
    Unlock {
        /// The file.
        node: NodeId,
        /// The kernel's lock owner.
        owner: u64,
        /// The bytes.
        range: ByteRange,
    },
    /// Which lock of another owner would stop `owner` taking `kind` on
    /// `range` (F_GETLK): [`Reply::LockTest`].
    TestLock {
        /// The file.
        node: NodeId,
        /// The kernel's lock owner asking.
        owner: u64,
        /// The bytes.
        range: ByteRange,
        /// The lock it would take.
        kind: LockKind,
    },
    /// Give a non-directory another name (a hard link). Both names are
    /// then one node: the answer ([`Reply::Attr`]) carries the node the
    /// file already had, with its new link count.
    Link {
        /// The file.
        node: NodeId,
        /// Directory of the new name.
        parent: NodeId,
        /// The new name.
        name: Name,
    },
    /// Take back `owner`'s lock requests on exactly `range` that still
    /// wait (a signal interrupted the program's `F_SETLKW`), leaving the
    /// locks it holds as they are: [`Reply::Done`]. Each request taken
    /// back is answered first, with EINTR, so that a client knows its
    /// wait is over even when the withdrawal overtook it on the way.
    Withdraw {
        /// The file.
        node: NodeId,
        /// The kernel's lock owner.
        owner: u64,
        /// The bytes the request asked for.
        range: ByteRange,
    },
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Reply {
    /// Hello accepted.
    HelloAck {
        /// The session (new, or the one resumed).
        session: SessionId,
        /// The shared folder's attributes.
        root: Attr,
        /// The host's limits.
        limits: Limits,
    },
    /// A node's attributes (Lookup, GetAttr, SetAttr, CommitWrite).
    Attr(Attr),
    /// A directory page; `next` is the cookie of the following page, or
    /// `None` at the end.
    DirPage {
        /// Up to [`super::MAX_DIR_PAGE`] entries.
        entries: Vec<DirEntry>,
        /// Cookie of the next page.
        next: Option<u64>,
    },
    /// File bytes.
    Data {
        /// The bytes (shorter than asked at end of file).
        #[cfg_attr(feature = "arbitrary", arbitrary(with = arbitrary_bytes))]
        #[serde(with = "codec::shared")]
        data: Bytes,
        /// The [`Attr::version`] of the file the bytes were read from, so
        /// the client caches them under the content they belong to even if
        /// the file changed since it last looked.
        version: u64,
    },
    /// A symlink's target.
    Link(Vec<u8>),
    /// File system statistics.
    StatFs(StatFs),
    /// A lock granted or refreshed.
    LockGranted {
        /// Its fencing token.
        token: LockToken,
        /// Time until it expires unless refreshed, in milliseconds.
        ttl_ms: u32,
    },
    /// A file opened.
    Opened {
        /// The handle.
        handle: HandleId,
        /// The file's attributes at open (close-to-open: the client
        /// compares `version` with its cache).
        attr: Attr,
        /// The whole file when it fits in one chunk, read with the open
        /// (a small file then needs no Read); empty otherwise.
        #[cfg_attr(feature = "arbitrary", arbitrary(with = arbitrary_bytes))]
        #[serde(with = "codec::shared")]
        inline: Bytes,
        /// For a create that opens: its directory's new attributes, as
        /// in [`Reply::Made`]; empty for an open.
        dirs: Vec<Attr>,
    },
    /// A write transaction started.
    WriteBegun {
        /// Its id.
        txn: TxnId,
    },
    /// Done (Close, Unlink, Rmdir, Rename, ReleaseLock, WriteChunk,
    /// TruncateWrite, AbortWrite, Goodbye).
    Done,
    /// A lease granted ([`Request::Lease`]).
    Leased(LeaseGrant),
    /// The outcome of each operation of an [`Request::Apply`], in order:
    /// the new file's attributes, or why the host refused it.
    Applied(Vec<Result<Attr, Errno>>),
    /// A name made (Create, Mkdir, Symlink, Mknod, Link): the file's
    /// attributes, and its directory's after the change (its new times
    /// and link count, as NFS's after-attributes; empty if the host
    /// could not read them).
    Made {
        /// The file's attributes.
        attr: Attr,
        /// The directory's, at most one.
        dirs: Vec<Attr>,
        /// The new directory's lease, for a [`Request::Mkdir`] that asked
        /// and got it: the directory was empty once it was granted.
        lease: Option<LeaseGrant>,
    },
    /// An extended attribute's value, or a list of names
    /// ([`Request::GetXattr`], [`Request::ListXattr`]).
    Xattr(Vec<u8>),
    /// The answer to [`Request::TestLock`]: the first lock in the way,
    /// or `None` if the lock could be taken now.
    LockTest(Option<RangeHeld>),
    /// Names removed or moved (Unlink, Rmdir, Rename): done, with the
    /// attributes of the directories changed, after the change (a
    /// rename's source directory first; empty if the host could not read
    /// them).
    Unnamed {
        /// The directories' attributes, at most two.
        dirs: Vec<Attr>,
    },
}

impl Reply {
    /// The attributes of directories this reply says changed.
    pub fn dirs(&self) -> &[Attr] {
        match self {
            Reply::Made { dirs, .. } | Reply::Opened { dirs, .. } | Reply::Unnamed { dirs } => dirs,
            _ => &[],
        }
    }
}

/// Client → host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ClientMessage {
    /// Echoed in the reply.
    pub id: RequestId,
    /// The request.
    pub request: Request,
}

impl WireMessage for ClientMessage {
    // One write piece plus its envelope.
    const MAX_SIZE: usize = MAX_WRITE_PIECE + 1024;
}

/// Host → client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum HostMessage {
    /// The answer to request `id`.
    Reply {
        /// The request answered.
        id: RequestId,
        /// Its outcome.
        result: Result<Reply, Errno>,
    },
    /// Something changed on the host; drop or revalidate cached state.
    Invalidate {
        /// The node that changed.
        node: NodeId,
        /// What changed.
        what: Invalidation,
    },
    /// Another session waits for the directory of lease `token`: send
    /// what is still to apply, then release the lease.
    Recall {
        /// The lease.
        token: LockToken,
    },
}

impl WireMessage for HostMessage {
    // A full directory page: 512 × (255-byte name + attributes) ≈ 180 KiB.
    const MAX_SIZE: usize = MAX_MESSAGE_SIZE;
}

impl ClientMessage {
    /// Wire bytes.
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        codec::encode(self)
    }

    /// Wire bytes in pieces, the data it carries not copied
    /// ([`codec::encode_pieces`]).
    pub fn encode_pieces(&self) -> Result<codec::Pieces, CodecError> {
        codec::encode_pieces(self)
    }

    /// Parses wire bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }

    /// Parses a received frame; the data it carries shares the frame's
    /// buffer ([`codec::decode_shared`]).
    pub fn decode_shared(frame: &Bytes) -> Result<Self, CodecError> {
        codec::decode_shared(frame)
    }
}

impl HostMessage {
    /// Wire bytes.
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        codec::encode(self)
    }

    /// Wire bytes in pieces, the data it carries not copied
    /// ([`codec::encode_pieces`]).
    pub fn encode_pieces(&self) -> Result<codec::Pieces, CodecError> {
        codec::encode_pieces(self)
    }

    /// Parses wire bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }

    /// Parses a received frame; the data it carries shares the frame's
    /// buffer ([`codec::decode_shared`]).
    pub fn decode_shared(frame: &Bytes) -> Result<Self, CodecError> {
        codec::decode_shared(frame)
    }
}

#[cfg(test)]
mod tests;

/// `Bytes` has no `Arbitrary` implementation: fuzz inputs draw a `Vec`.
#[cfg(feature = "arbitrary")]
fn arbitrary_bytes(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Bytes> {
    Ok(Bytes::from(<Vec<u8> as arbitrary::Arbitrary>::arbitrary(
        u,
    )?))
}
