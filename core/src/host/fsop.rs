//! The host's file operations as plain data: what the core asks the shell
//! to do to the shared folder, and what comes back.
//!
//! Every path is a [`RelPath`]: a list of checked [`Name`]s, so it cannot
//! be absolute and cannot contain `..`; it is interpreted beneath the
//! shared root only. The shell must execute every operation without
//! following any symlink, the final component included (e.g. `openat2`
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, `O_NOFOLLOW`,
//! `AT_SYMLINK_NOFOLLOW`): a symlink is data to report (`Readlink`), never a
//! path to take. That is the whole of the confinement rule, and it is why a
//! host never calls into a mount that a symlink points at.

use crate::proto::{
    ByteRange, Errno, FileKey, FileKind, LockKind, Name, NodeId, OpenFor, Owner, SessionId,
    SetAttr, StatFs, Timestamp, TxnId, XattrSet,
};
use bytes::Bytes;
use core::fmt;

/// A path beneath the shared root; empty is the root itself.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<Name>);

impl RelPath {
    /// The shared root.
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    /// `self/name`.
    pub fn join(&self, name: &Name) -> Self {
        let mut v = self.0.clone();
        v.push(name.clone());
        RelPath(v)
    }

    /// The components.
    pub fn names(&self) -> &[Name] {
        &self.0
    }

    /// The parent and last name, unless this is the root.
    pub fn split_last(&self) -> Option<(RelPath, &Name)> {
        let (last, rest) = self.0.split_last()?;
        Some((RelPath(rest.to_vec()), last))
    }

    /// Whether `self` is `other` or lies beneath it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0.starts_with(&other.0)
    }
}

impl From<Vec<Name>> for RelPath {
    fn from(names: Vec<Name>) -> Self {
        RelPath(names)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for n in &self.0 {
            write!(f, "/{}", String::from_utf8_lossy(n.as_bytes()))?;
        }
        Ok(())
    }
}

/// Attributes as the disk reports them (the core adds the node id and the
/// version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsAttr {
    /// Device and inode.
    pub key: FileKey,
    /// Kind (a device node the host does not allow is not reported: the
    /// host core drops it).
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The device a device node stands for (else 0).
    pub rdev: u64,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
}

/// One content of a file on the host's disk: its identity, size and
/// modification time. A transaction stages from one stamp and commits
/// only over the same one, so a file replaced or changed in between (by
/// a local program) is never overwritten with a version built on what it
/// held before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    /// Device and inode.
    pub key: FileKey,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
}

impl From<&FsAttr> for FileStamp {
    fn from(a: &FsAttr) -> Self {
        FileStamp {
            key: a.key,
            size: a.size,
            mtime: a.mtime,
        }
    }
}

/// A file handle the core asks the shell to keep open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FsHandle(pub u64);

/// How [`FsOp::Create`] opens the file it made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenAs {
    /// The handle the core will use.
    pub handle: FsHandle,
    /// As [`FsOp::Open`]'s `inline_max`.
    pub inline_max: u32,
}

/// What to read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// Open, read, close (no-follow, beneath the root).
    Path(RelPath),
    /// An open handle (works after the file was unlinked).
    Handle(FsHandle),
}

/// A new file of a [`BatchOp::Create`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewFile {
    /// Its name.
    pub name: Name,
    /// Permission bits.
    pub mode: u32,
    /// Its owner, if not the host's user.
    pub owner: Option<Owner>,
    /// Access and modification times to give it (its `size` and `mode`
    /// are not used).
    pub times: SetAttr,
    /// Its content.
    pub data: Bytes,
}

/// One operation of [`FsOp::Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// A new regular file, made as one inode: its content, mode and times
    /// written to a hidden file which is then linked at its name only if
    /// the name is free (EEXIST otherwise), the data ordered before the
    /// name as a commit's is. Its result is the new file's attributes.
    Create(NewFile),
    /// Remove a name that does not hold a directory (EISDIR if it does),
    /// as [`FsOp::Unlink`], if it still holds the file `key` (ESTALE if
    /// another file took the name: a lease holder's unlink, applied
    /// late, must not remove a file made after it). Its result is the
    /// attributes the file had, its link count less one.
    Unlink {
        /// The name.
        name: Name,
        /// The file it must hold.
        key: FileKey,
    },
    /// Remove a name that holds an empty directory (ENOTDIR if it holds
    /// something else, ENOTEMPTY if it is not empty), as [`FsOp::Rmdir`],
    /// if it still holds the directory `key` (ESTALE otherwise). Its
    /// result is the attributes the directory had.
    Rmdir {
        /// The name.
        name: Name,
        /// The directory it must hold.
        key: FileKey,
    },
    /// Set the batch's directory's own mode and times, as
    /// [`FsOp::SetAttr`] (never its size or owner). Its result is the
    /// directory's attributes.
    SetAttr(SetAttr),
}

/// One operation on the shared folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsOp {
    /// Attributes (lstat semantics: a symlink is reported, not followed).
    Stat {
        /// What.
        path: RelPath,
    },
    /// Up to `max` entries of a directory from position `cookie`; the
    /// shell returns them in a stable order (by name) so cookies stay valid
    /// between pages.
    List {
        /// The directory.
        path: RelPath,
        /// Entries to skip.
        cookie: u64,
        /// Entries at most.
        max: u32,
    },
    /// Open a regular file for reading and keep it as `handle`. With
    /// `mode` other than [`OpenFor::Read`], first check that the host may
    /// also open it for writing that way (an open for writing that fails
    /// with its errno), so a refusal comes at open, not at close.
    Open {
        /// The file.
        path: RelPath,
        /// What the client's open is for.
        mode: OpenFor,
        /// The handle the core will use.
        handle: FsHandle,
        /// Read the whole file with the open if it holds at most this
        /// many bytes (a small file then needs no Read).
        inline_max: u32,
    },
    /// Close a handle.
    Close {
        /// The handle.
        handle: FsHandle,
    },
    /// Read bytes.
    Read {
        /// From where.
        from: ReadFrom,
        /// Offset.
        offset: u64,
        /// At most this many bytes.
        len: u32,
    },
    /// Create a regular file.
    Create {
        /// Where.
        path: RelPath,
        /// Permission bits.
        mode: u32,
        /// Its owner, if not the host's user (a directory with the
        /// set-group-ID bit keeps giving its group).
        owner: Option<Owner>,
        /// Fail if it exists.
        exclusive: bool,
        /// Open the file for reading too, under this handle, as
        /// [`FsOp::Open`] would (the result is then [`FsOk::Opened`]).
        open: Option<OpenAs>,
    },
    /// Create a directory.
    Mkdir {
        /// Where.
        path: RelPath,
        /// Permission bits.
        mode: u32,
        /// Its owner, if not the host's user.
        owner: Option<Owner>,
    },
    /// Create a FIFO or socket name (`mknod`), or an empty regular file.
    Mknod {
        /// Where.
        path: RelPath,
        /// Any kind but a directory or symlink.
        kind: FileKind,
        /// Permission bits.
        mode: u32,
        /// The device, for a device node.
        rdev: u64,
        /// Its owner, if not the host's user.
        owner: Option<Owner>,
    },
    /// Remove a non-directory (a symlink itself, never its target).
    Unlink {
        /// What.
        path: RelPath,
    },
    /// Remove an empty directory.
    Rmdir {
        /// What.
        path: RelPath,
    },
    /// Rename, replacing the target.
    Rename {
        /// From.
        from: RelPath,
        /// To.
        to: RelPath,
    },
    /// Create a symlink holding `target` (never resolved by the host).
    Symlink {
        /// Where.
        path: RelPath,
        /// The link text.
        target: Vec<u8>,
        /// Its owner, if not the host's user.
        owner: Option<Owner>,
    },
    /// Give the non-directory at `path` a second name `to` (a hard link;
    /// a symlink is linked itself, never followed), only if it is still
    /// the file `key`: ESTALE if another took its name (the host's index
    /// may lag behind a local program). Answers the file's attributes
    /// ([`FsOk::Attr`]), its link count raised.
    Link {
        /// The file.
        path: RelPath,
        /// The new name.
        to: RelPath,
        /// The identity the host knows the file by.
        key: FileKey,
    },
    /// An extended attribute's value ([`FsOk::Xattr`]; ENODATA if it
    /// has none of that name). Of a regular file or directory only: the
    /// host never opens anything else.
    GetXattr {
        /// The file or directory.
        path: RelPath,
        /// The attribute's name.
        name: Vec<u8>,
        /// The identity the host knows the file by: another file at
        /// `path` (renamed there after the request was made) is ESTALE,
        /// so one file's attributes are never read or changed through
        /// another's node. `None`: not checked.
        key: Option<FileKey>,
    },
    /// The names of its extended attributes, each ended by a NUL
    /// ([`FsOk::Xattr`]; of a regular file or directory only).
    ListXattr {
        /// The file or directory.
        path: RelPath,
        /// As for [`FsOp::GetXattr`]'s `key`.
        key: Option<FileKey>,
    },
    /// Set an extended attribute; answers the attributes after it.
    SetXattr {
        /// The file or directory.
        path: RelPath,
        /// The attribute's name.
        name: Vec<u8>,
        /// Its value.
        value: Vec<u8>,
        /// Create, replace, or either.
        how: XattrSet,
        /// As for [`FsOp::GetXattr`]'s `key`.
        key: Option<FileKey>,
    },
    /// Remove an extended attribute; answers the attributes after it.
    RemoveXattr {
        /// The file or directory.
        path: RelPath,
        /// The attribute's name.
        name: Vec<u8>,
        /// As for [`FsOp::GetXattr`]'s `key`.
        key: Option<FileKey>,
    },
    /// A symlink's text.
    Readlink {
        /// The symlink.
        path: RelPath,
    },
    /// Change mode or times (size changes go through a write transaction).
    SetAttr {
        /// What.
        path: RelPath,
        /// The changes (`size` is always `None` here).
        set: SetAttr,
    },
    /// Statistics of the shared folder's file system.
    StatFs,
    /// Start staging a new version of `path`: a hidden file beside it,
    /// holding a copy of its current content. Answers the attributes of
    /// the content staged from ([`FsOk::Attr`]).
    StageBegin {
        /// The transaction.
        txn: TxnId,
        /// The file.
        path: RelPath,
    },
    /// Write bytes into the staged copy.
    StageWrite {
        /// The transaction.
        txn: TxnId,
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// Copy `len` bytes of a file beneath the root (never a special file)
    /// at `from_offset` into the staged copy at `offset`: a reflink or an
    /// in-kernel copy where the file system can. Fewer than `len` bytes
    /// in the source is EIO (the client promised them all).
    StageCopy {
        /// The transaction.
        txn: TxnId,
        /// The source.
        from: ReadFrom,
        /// Where in the source.
        from_offset: u64,
        /// Where in the staged copy.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// Set the staged copy's size (cut, or extend with zeros).
    StageTruncate {
        /// The transaction.
        txn: TxnId,
        /// New size.
        size: u64,
    },
    /// Make the staged copy the file, atomically: set its size and rename
    /// it over `path`, so that a crash at any later moment leaves the old
    /// content or the whole new one, never a mix (the staged bytes reach
    /// the disk before the rename does: by an fsync first, or by the file
    /// system's own ordering where it promises that). Durable only after
    /// the next [`FsOp::Sync`]. If the file at `path` is no longer `base`
    /// (another file was put there, or it was changed in place), nothing
    /// is renamed: ESTALE, and the staging is dropped.
    ///
    /// A file with other hard links is written in place instead (every
    /// name must keep showing one file): the staged content is copied
    /// into it, so only there can a crash leave a mix, as on a local disk.
    StageCommit {
        /// The transaction.
        txn: TxnId,
        /// The file.
        path: RelPath,
        /// Final size.
        size: u64,
        /// The content the transaction was staged from.
        base: FileStamp,
        /// Mode and times for the new content, set before it replaces
        /// the old (its `size` is not used); unset, the file keeps the
        /// mode it has at commit time. (Boxed: it would make every
        /// operation larger, and commits are few.)
        set: Box<SetAttr>,
    },
    /// Delete the staged copy; the file is untouched.
    StageAbort {
        /// The transaction.
        txn: TxnId,
    },
    /// Operations in `dir` a lease holder answered itself
    /// ([`BatchOp`]), run in order, each on its own: one result per
    /// operation, in [`FsOk::Batch`].
    Batch {
        /// The directory.
        dir: RelPath,
        /// The operations.
        ops: Vec<BatchOp>,
    },
    /// Make every change whose result was reported before this operation
    /// was issued durable (the group commit): answered `Done` once the
    /// disk has it, or with the error the disk gave.
    Sync,
    /// Hold on the host's own file exactly the record locks `locks` of
    /// one client lock owner (none: let go of them), so that the host's
    /// local programs are kept out of what clients lock, as clients are
    /// (docs/filesystem.md, "Programs on the host"). `Done` once held;
    /// EAGAIN if a lock is in the way, and then nothing changed;
    /// ESTALE if the file at `path` is not `key`; another error if the
    /// file cannot be opened (nothing is held). If the file at `path` is
    /// no longer the one the holder's locks are on (a local program
    /// replaced it), they move to the new one.
    /// The shell runs it at once, in the order issued (a few
    /// non-blocking `fcntl`s): a later one for the same holder says what
    /// it holds from then on.
    HoldLocks {
        /// The file; `None` only to let go (its name is gone).
        path: Option<RelPath>,
        /// Whose locks.
        holder: LockHolder,
        /// The file's identity, as the host knows it.
        key: Option<FileKey>,
        /// Every range the holder holds on the file, in order, disjoint.
        locks: Vec<(ByteRange, LockKind)>,
    },
}

/// Who holds record locks on a host file through [`FsOp::HoldLocks`]:
/// one kernel lock owner of one client session, on one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockHolder {
    /// The client's session.
    pub session: SessionId,
    /// The kernel's lock owner there.
    pub owner: u64,
    /// The file.
    pub node: NodeId,
}

impl FsOp {
    /// The directories whose entries it changes: the shell answers their
    /// new attributes with its result ([`FsOk::InDirs`]), so a client sees
    /// a directory's new times and link count at once, as NFS's
    /// after-attributes give them.
    pub fn dirs_changed(&self) -> Vec<RelPath> {
        let parent = |p: &RelPath| p.split_last().map(|(dir, _)| dir);
        match self {
            FsOp::Create { path, .. }
            | FsOp::Mkdir { path, .. }
            | FsOp::Mknod { path, .. }
            | FsOp::Symlink { path, .. }
            | FsOp::Unlink { path }
            | FsOp::Rmdir { path }
            | FsOp::Link { to: path, .. } => parent(path).into_iter().collect(),
            FsOp::Rename { from, to } => {
                let (from, to) = (parent(from), parent(to));
                let mut dirs: Vec<RelPath> = from.into_iter().collect();
                dirs.extend(to.filter(|t| !dirs.contains(t)));
                dirs
            }
            _ => Vec::new(),
        }
    }

    /// Whether it changes what the disk keeps (and so must be synced to
    /// survive a crash). Staging is not: it is thrown away by a crash
    /// anyway, and its commit is.
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            FsOp::Create { .. }
                | FsOp::Mkdir { .. }
                | FsOp::Unlink { .. }
                | FsOp::Rmdir { .. }
                | FsOp::Rename { .. }
                | FsOp::Symlink { .. }
                | FsOp::Link { .. }
                | FsOp::Mknod { .. }
                | FsOp::SetXattr { .. }
                | FsOp::RemoveXattr { .. }
                | FsOp::SetAttr { .. }
                | FsOp::StageCommit { .. }
                | FsOp::Batch { .. }
        )
    }
}

/// The result of an [`FsOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsOk {
    /// Attributes (Stat, Create, Mkdir, Symlink, Link, SetAttr, StageCommit).
    Attr(FsAttr),
    /// A directory page; `next` is the cookie of the next page.
    Listing {
        /// Entries, by name.
        entries: Vec<(Name, FsAttr)>,
        /// The next cookie, or `None` at the end.
        next: Option<u64>,
    },
    /// Opened (Open): the attributes and, if the file held at most
    /// `inline_max` bytes, all of them (else empty).
    Opened(FsAttr, Bytes),
    /// Bytes (Read), and the attributes of the file they came from
    /// (fstat of the same open file, so the two agree).
    Data(Bytes, FsAttr),
    /// Link text (Readlink).
    Link(Vec<u8>),
    /// An extended attribute's value, or a list of names (GetXattr,
    /// ListXattr).
    Xattr(Vec<u8>),
    /// Statistics (StatFs).
    StatFs(StatFs),
    /// One outcome per operation of [`FsOp::Batch`], in order.
    Batch(Vec<Result<FsAttr, Errno>>),
    /// Done (Close, Unlink, Rmdir, Rename, StageBegin, StageWrite,
    /// StageCopy, StageTruncate, StageAbort, Sync).
    Done,
    /// The result of an operation that changed directories' entries,
    /// with their attributes after it, in [`FsOp::dirs_changed`]'s order
    /// (none if one could not be read).
    InDirs {
        /// The operation's own result.
        ok: Box<FsOk>,
        /// The directories' new attributes.
        dirs: Vec<FsAttr>,
    },
}

/// `result` of an operation that changed the directories `dirs`
/// ([`FsOp::dirs_changed`]) with their attributes now, read by `stat`
/// ([`FsOk::InDirs`]; none if one cannot be read). What every shell's
/// executor does after each operation.
pub fn with_dirs(
    result: FsResult,
    dirs: &[RelPath],
    mut stat: impl FnMut(&RelPath) -> Result<FsAttr, Errno>,
) -> FsResult {
    match result {
        Ok(ok) if !dirs.is_empty() => Ok(FsOk::InDirs {
            ok: Box::new(ok),
            dirs: dirs
                .iter()
                .map(&mut stat)
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_default(),
        }),
        other => other,
    }
}

/// A result without its directories' attributes, and those.
pub fn split_dirs(result: FsResult) -> (FsResult, Vec<FsAttr>) {
    match result {
        Ok(FsOk::InDirs { ok, dirs }) => (Ok(*ok), dirs),
        other => (other, Vec::new()),
    }
}

/// What the shell reports for one operation.
pub type FsResult = Result<FsOk, Errno>;

/// Identifies an operation in flight, so its result finds its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FsOpId(pub u64);
