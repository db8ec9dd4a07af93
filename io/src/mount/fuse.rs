//! The FUSE adapter: kernel requests in, [`Op`]s out, and core answers back
//! to the kernel.
//!
//! [`WormholeFs`] makes no file-system decision. Each request becomes one
//! [`Op`] that fuser's thread feeds, with fuser's reply object, to the
//! [`ClientCore`](wormhole_core::client::ClientCore) the mount shares
//! with its driver ([`crate::mount`]); the answer goes wherever the core
//! gives it (a cache hit at once, on this thread; a miss from the driver
//! when the host replies). fuser's session thread therefore never waits
//! for the host: it hands the request over and reads the next one, so
//! many requests are in flight at once.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fuser::{
    FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use std::sync::Arc;
use tracing::{trace, warn};
use wormhole_core::client::{Allocate, Answer, Fh, Op};
use wormhole_core::proto::{
    Attr, ByteRange, CAPABILITY_XATTR, CHUNK_SIZE, Errno, FileKind, LockKind, Name, OpenFor, Owner,
    SetAttr, SetTime, StatFs, Timestamp, XattrSet,
};
use wormhole_core::vfs::Ino;

use super::MountError;
use super::driver::Shared;

/// Requests the kernel may have queued in the background (reads ahead,
/// write-back); the core answers them concurrently, so let it send more
/// than fuser's default of 16.
const MAX_BACKGROUND: u16 = 64;

/// A kernel reply object, waiting for the core's answer.
#[derive(Debug)]
pub(crate) enum KernelReply {
    /// lookup, mkdir, symlink.
    Entry(ReplyEntry),
    /// getattr, setattr, and the inode asked about (the kernel reports
    /// the reply's inode number as `st_ino`).
    Attr(ReplyAttr, Ino),
    /// readdir.
    Dir(ReplyDirectory),
    /// readdirplus: entries with their attributes, each one a lookup
    /// reference the kernel takes.
    DirPlus(ReplyDirectoryPlus),
    /// open; `true` when opened for reading only.
    Open(ReplyOpen, bool),
    /// read, readlink.
    Data(ReplyData),
    /// write.
    Write(ReplyWrite),
    /// Operations that answer nothing but success or an errno.
    Empty(ReplyEmpty),
    /// create.
    Create(ReplyCreate),
    /// statfs.
    Statfs(ReplyStatfs),
    /// getxattr, listxattr.
    Xattr(ReplyXattr),
    /// getlk.
    Lock(ReplyLock),
}

/// The kernel's errno for a core errno (the same Linux numbers).
fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.raw())
}

impl KernelReply {
    /// Sends the core's answer to the kernel; returns the inodes the
    /// kernel took a lookup reference on without a lookup (the entries of
    /// a readdirplus answer that fit its buffer), which the core must
    /// count. An answer of the wrong shape for the request is a core bug;
    /// the kernel gets EIO rather than a hang.
    #[must_use = "the core must count the lookup references the kernel took"]
    pub(crate) fn answer(self, result: Result<Answer, Errno>) -> Vec<Ino> {
        let answer = match result {
            Ok(a) => a,
            Err(e) => {
                self.error(errno(e));
                return Vec::new();
            }
        };
        let mut taken = Vec::new();
        match (self, answer) {
            (KernelReply::Entry(r), Answer::Entry { ino, attr, ttl }) => {
                r.entry(&ttl, &file_attr(ino, &attr), Generation(0));
            }
            (KernelReply::Attr(r, ino), Answer::Attr { attr, ttl }) => {
                r.attr(&ttl, &file_attr(ino, &attr));
            }
            (KernelReply::Dir(mut r), Answer::Dir(items)) => {
                for item in items {
                    let name = OsStr::from_bytes(item.name.as_bytes());
                    if r.add(INodeNo(item.ino.0), item.next, file_type(item.kind), name) {
                        // The kernel's buffer is full; it asks again from
                        // the last offset it took.
                        break;
                    }
                }
                r.ok();
            }
            (KernelReply::DirPlus(mut r), Answer::Dir(items)) => {
                for item in items {
                    let name = OsStr::from_bytes(item.name.as_bytes());
                    let attr = file_attr(item.ino, &item.attr);
                    let ttl = item.ttl;
                    if r.add(
                        INodeNo(item.ino.0),
                        item.next,
                        name,
                        &ttl,
                        &attr,
                        Generation(0),
                    ) {
                        break;
                    }
                    // The kernel takes no reference to `.` and `..`.
                    if item.name.entry().is_some() {
                        taken.push(item.ino);
                    }
                }
                r.ok();
            }
            (KernelReply::Open(r, read_only), Answer::Opened { fh, keep_cache }) => {
                let mut flags = FopenFlags::empty();
                flags.set(FopenFlags::FOPEN_KEEP_CACHE, keep_cache);
                // A handle that cannot write has nothing to flush at
                // close: the kernel then skips a FLUSH round trip per
                // close (small-file reading is a few local requests per
                // file; this is one of them). Its release still closes it.
                flags.set(FopenFlags::FOPEN_NOFLUSH, read_only);
                r.opened(FileHandle(fh.0), flags);
            }
            (KernelReply::Data(r), Answer::Data(data)) => r.data(&data),
            (KernelReply::Data(r), Answer::Link(target)) => r.data(&target),
            (KernelReply::Write(r), Answer::Written(n)) => r.written(n),
            (KernelReply::Empty(r), Answer::Done) => r.ok(),
            (KernelReply::Create(r), Answer::Created { ino, attr, ttl, fh }) => {
                r.created(
                    &ttl,
                    &file_attr(ino, &attr),
                    Generation(0),
                    FileHandle(fh.0),
                    FopenFlags::empty(),
                );
            }
            (KernelReply::Statfs(r), Answer::StatFs(s)) => statfs(r, &s),
            (KernelReply::Xattr(r), Answer::Xattr(bytes)) => r.data(&bytes),
            (KernelReply::Xattr(r), Answer::XattrSize(n)) => r.size(n),
            // Held on another client, or by another owner here: its
            // process is not one of this machine's (pid 0, as NFS says).
            (KernelReply::Lock(r), Answer::Lock(Some(held))) => {
                r.locked(
                    held.range.start,
                    held.range.end,
                    lock_type(Some(held.kind)),
                    0,
                );
            }
            (KernelReply::Lock(r), Answer::Lock(None)) => r.locked(0, 0, lock_type(None), 0),
            (reply, answer) => {
                warn!(?answer, "core answer does not fit the kernel request");
                reply.error(fuser::Errno::EIO);
            }
        }
        taken
    }

    /// Fails the request with `e`.
    pub(crate) fn error(self, e: fuser::Errno) {
        match self {
            KernelReply::Entry(r) => r.error(e),
            KernelReply::Attr(r, _) => r.error(e),
            KernelReply::Dir(r) => r.error(e),
            KernelReply::DirPlus(r) => r.error(e),
            KernelReply::Open(r, _) => r.error(e),
            KernelReply::Data(r) => r.error(e),
            KernelReply::Write(r) => r.error(e),
            KernelReply::Empty(r) => r.error(e),
            KernelReply::Create(r) => r.error(e),
            KernelReply::Statfs(r) => r.error(e),
            KernelReply::Xattr(r) => r.error(e),
            KernelReply::Lock(r) => r.error(e),
        }
    }
}

/// `struct flock`'s `l_type` for a lock kind (`None`: F_UNLCK).
fn lock_type(kind: Option<LockKind>) -> i32 {
    match kind {
        Some(LockKind::Shared) => libc_lock::F_RDLCK,
        Some(LockKind::Exclusive) => libc_lock::F_WRLCK,
        None => libc_lock::F_UNLCK,
    }
}

/// The lock kind of a `struct flock`'s `l_type`: `None` unlocks.
fn lock_kind(typ: i32) -> Result<Option<LockKind>, fuser::Errno> {
    match typ {
        libc_lock::F_RDLCK => Ok(Some(LockKind::Shared)),
        libc_lock::F_WRLCK => Ok(Some(LockKind::Exclusive)),
        libc_lock::F_UNLCK => Ok(None),
        _ => Err(fuser::Errno::EINVAL),
    }
}

/// Linux's `l_type` values (the same on every architecture).
mod libc_lock {
    pub(super) const F_RDLCK: i32 = 0;
    pub(super) const F_WRLCK: i32 = 1;
    pub(super) const F_UNLCK: i32 = 2;
}

fn statfs(r: ReplyStatfs, s: &StatFs) {
    r.statfs(
        s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
    );
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nanos));
    match u64::try_from(t.secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs) + nanos,
        Err(_) => UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + nanos,
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            // Before 1970: whole seconds back, then nanoseconds forward.
            let d = e.duration();
            let mut secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let mut nanos = d.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            Timestamp { secs, nanos }
        }
    }
}

/// The kernel's attributes for a core `Attr` of inode `ino`.
fn file_attr(ino: Ino, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino.0),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.ctime),
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        // The kernel's device number is 32 bits (major 12, minor 20).
        rdev: u32::try_from(a.rdev).unwrap_or(0),
        // Programs that size their I/O by st_blksize (cp, cat) then move
        // whole chunks.
        blksize: CHUNK_SIZE as u32,
        flags: 0,
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timestamp(t)),
    }
}

/// The Wormhole file system as fuser sees it: a thin relay to the client
/// core.
pub(super) struct WormholeFs {
    core: Arc<Shared>,
}

impl std::fmt::Debug for WormholeFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WormholeFs").finish_non_exhaustive()
    }
}

impl WormholeFs {
    pub(crate) fn new(core: Arc<Shared>) -> Self {
        WormholeFs { core }
    }

    /// Feeds an operation to the core. The kernel bounds what it has
    /// outstanding (its background limit, one request per blocked
    /// thread), and a driver that is gone fails the request.
    fn op(&self, op: Op, reply: KernelReply) {
        self.core.op(op, reply);
    }

    fn name(name: &OsStr) -> Result<Name, fuser::Errno> {
        Name::new(name.as_bytes()).map_err(|e| errno(e.errno()))
    }
}

/// The user and group of the process that made a request.
fn caller(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn ino(i: INodeNo) -> Ino {
    Ino(i.0)
}

/// Only permission bits travel; the kernel has applied the umask already
/// unless told not to, and applying it again changes nothing.
fn perm(mode: u32, umask: u32) -> u32 {
    mode & !umask & 0o7777
}

impl Drop for WormholeFs {
    /// fuser drops the file system when its session ends, however it
    /// ends: the driver then says goodbye and stops.
    fn drop(&mut self) {
        self.core.unmounted();
    }
}

impl fuser::Filesystem for WormholeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_background(MAX_BACKGROUND);
        // Each only if the kernel offers it:
        // * parallel dirops: lookups and readdirs in one directory need
        //   not queue behind each other in the kernel; the core answers
        //   them concurrently.
        // * auto inval data: pages cached under `keep_cache` are dropped
        //   when the attributes show a new mtime or size.
        // * cache symlinks: a symlink's target never changes (a new
        //   target is a new file on the host).
        // * readdirplus (adaptive): a listing carries the attributes, so
        //   `ls -l` and `find -ls` need no lookup per entry.
        // * POSIX and flock locks: the kernel sends every `fcntl` lock
        //   and every `flock` here, to be held at the host for all
        //   clients (a `flock` as a lock of the whole file, owned by
        //   its open file), instead of keeping them to this machine.
        // * atomic O_TRUNC: the kernel passes O_TRUNC with the open
        //   instead of truncating first with a SETATTR of its own, so the
        //   truncate joins the writes' transaction and the old content
        //   stays until it commits (a crash or a failure keeps it).
        for flag in [
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match Self::name(name) {
            Ok(name) => self.op(
                Op::Lookup {
                    parent: ino(parent),
                    name,
                },
                KernelReply::Entry(reply),
            ),
            Err(e) => reply.error(e),
        }
    }

    // batch_forget: fuser's default calls forget for each node (its
    // ForgetOne type is not public, so it cannot be overridden).
    fn forget(&self, _req: &Request, i: INodeNo, nlookup: u64) {
        self.core.forget(ino(i), nlookup);
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.op(
            Op::GetAttr { ino: ino(i) },
            KernelReply::Attr(reply, ino(i)),
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            size,
            mode: mode.map(|m| m & 0o7777),
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            uid,
            gid,
        };
        self.op(
            Op::SetAttr { ino: ino(i), set },
            KernelReply::Attr(reply, ino(i)),
        );
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        self.op(Op::Readlink { ino: ino(i) }, KernelReply::Data(reply));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match Self::name(name) {
            Ok(name) => self.op(
                Op::Mkdir {
                    parent: ino(parent),
                    name,
                    mode: perm(mode, umask),
                    caller: Some(caller(req)),
                },
                KernelReply::Entry(reply),
            ),
            Err(e) => reply.error(e),
        }
    }

    /// FIFOs, sockets and device nodes are made on the host as what they
    /// are (device nodes only where the host allows them); the kernel
    /// opens them here, never through us. A regular file is made empty.
    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match rustix::fs::FileType::from_raw_mode(mode) {
            rustix::fs::FileType::Fifo => FileKind::Fifo,
            rustix::fs::FileType::Socket => FileKind::Socket,
            rustix::fs::FileType::CharacterDevice => FileKind::CharDevice,
            rustix::fs::FileType::BlockDevice => FileKind::BlockDevice,
            rustix::fs::FileType::RegularFile => FileKind::File,
            _ => return reply.error(fuser::Errno::EINVAL),
        };
        match Self::name(name) {
            Ok(name) => self.op(
                Op::Mknod {
                    parent: ino(parent),
                    name,
                    kind,
                    mode: perm(mode, umask),
                    rdev: u64::from(rdev),
                    caller: Some(caller(req)),
                },
                KernelReply::Entry(reply),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match Self::name(name) {
            Ok(name) => self.op(
                Op::Unlink {
                    parent: ino(parent),
                    name,
                },
                KernelReply::Empty(reply),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match Self::name(name) {
            Ok(name) => self.op(
                Op::Rmdir {
                    parent: ino(parent),
                    name,
                },
                KernelReply::Empty(reply),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match Self::name(link_name) {
            Ok(name) => self.op(
                Op::Symlink {
                    parent: ino(parent),
                    name,
                    target: target.as_os_str().as_bytes().to_vec(),
                    caller: Some(caller(req)),
                },
                KernelReply::Entry(reply),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // The kernel asks this before every write (to drop it); it is
        // never served, so it is answered here without the core.
        if name.as_bytes() == CAPABILITY_XATTR {
            return reply.error(fuser::Errno::ENODATA);
        }
        self.op(
            Op::GetXattr {
                ino: ino(i),
                name: name.as_bytes().to_vec(),
                size,
            },
            KernelReply::Xattr(reply),
        );
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        self.op(
            Op::ListXattr { ino: ino(i), size },
            KernelReply::Xattr(reply),
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        // XATTR_CREATE and XATTR_REPLACE; `position` is macOS's. Names
        // of namespaces the host does not serve are answered by the
        // core without asking it (`ls -l` asks every file for two).
        let how = match flags {
            0 => XattrSet::Either,
            1 => XattrSet::Create,
            2 => XattrSet::Replace,
            _ => return reply.error(fuser::Errno::EINVAL),
        };
        if position != 0 {
            return reply.error(fuser::Errno::EINVAL);
        }
        self.op(
            Op::SetXattr {
                ino: ino(i),
                name: name.as_bytes().to_vec(),
                value: value.to_vec(),
                how,
            },
            KernelReply::Empty(reply),
        );
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.op(
            Op::RemoveXattr {
                ino: ino(i),
                name: name.as_bytes().to_vec(),
            },
            KernelReply::Empty(reply),
        );
    }

    fn link(
        &self,
        _req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match Self::name(newname) {
            Ok(new_name) => self.op(
                Op::Link {
                    ino: ino(i),
                    new_parent: ino(newparent),
                    new_name,
                },
                KernelReply::Entry(reply),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            // RENAME_NOREPLACE / EXCHANGE have no protocol request.
            return reply.error(fuser::Errno::EINVAL);
        }
        match (Self::name(name), Self::name(newname)) {
            (Ok(name), Ok(new_name)) => self.op(
                Op::Rename {
                    parent: ino(parent),
                    name,
                    new_parent: ino(newparent),
                    new_name,
                },
                KernelReply::Empty(reply),
            ),
            (Err(e), _) | (_, Err(e)) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let read_only = matches!(flags.acc_mode(), fuser::OpenAccMode::O_RDONLY);
        let has = |f: rustix::fs::OFlags| flags.0 & f.bits() as i32 != 0;
        let mode = match (read_only, has(rustix::fs::OFlags::APPEND)) {
            (true, _) => OpenFor::Read,
            (false, true) => OpenFor::Append,
            (false, false) => OpenFor::Write,
        };
        self.op(
            Op::Open {
                ino: ino(i),
                mode,
                // Only passed with FUSE_ATOMIC_O_TRUNC (see `init`).
                truncate: has(rustix::fs::OFlags::TRUNC),
            },
            KernelReply::Open(reply, read_only),
        );
    }

    /// No ioctl is supported: ENOTTY, as for a file that is not a
    /// terminal, without fuser's warning (programs probe with ioctls at
    /// every open).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(fuser::Errno::ENOTTY);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.op(
            Op::Read {
                fh: Fh(fh.0),
                offset,
                size,
            },
            KernelReply::Data(reply),
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        // The file's flags now (`fcntl(F_SETFL)` may have changed them
        // since the open). A page the kernel writes back from its cache
        // (a shared mmap) goes in place through whichever handle it
        // picks, `O_APPEND` or not.
        let append = flags.0 & rustix::fs::OFlags::APPEND.bits() as i32 != 0
            && !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        self.op(
            Op::Write {
                fh: Fh(fh.0),
                offset,
                data: Bytes::copy_from_slice(data),
                append,
            },
            KernelReply::Write(reply),
        );
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The host copies; where it cannot, EOPNOTSUPP makes the kernel
        // copy through reads and writes instead.
        self.op(
            Op::CopyRange {
                fh_in: Fh(fh_in.0),
                offset_in,
                fh_out: Fh(fh_out.0),
                offset_out,
                len,
            },
            KernelReply::Write(reply),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        let op = Op::Flush {
            fh: Fh(fh.0),
            owner: Some(lock_owner.0),
        };
        self.op(op, KernelReply::Empty(reply));
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: fuser::LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let kind = match lock_kind(typ) {
            Ok(Some(kind)) => kind,
            Ok(None) | Err(_) => return reply.error(fuser::Errno::EINVAL),
        };
        let op = Op::GetLock {
            fh: Fh(fh.0),
            owner: lock_owner.0,
            range: ByteRange { start, end },
            kind,
        };
        self.op(op, KernelReply::Lock(reply));
    }

    fn setlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: fuser::LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let kind = match lock_kind(typ) {
            Ok(kind) => kind,
            Err(e) => return reply.error(e),
        };
        let op = Op::SetLock {
            fh: Fh(fh.0),
            owner: lock_owner.0,
            range: ByteRange { start, end },
            kind,
            wait: sleep,
        };
        if sleep {
            // A wait for another's lock, which a signal ends.
            let unique = req.unique().0;
            self.core
                .interruptible_op(op, KernelReply::Empty(reply), unique);
        } else {
            self.op(op, KernelReply::Empty(reply));
        }
    }

    /// A signal reached a program waiting on request `unique`: the core
    /// ends a lock wait with EINTR and lets the rest finish. (fuser
    /// itself answers ENOSYS, after which Linux sends no more interrupts
    /// and a program waiting for another machine's lock cannot be
    /// killed: see io/vendor/fuser.)
    fn interrupt(&self, _req: &Request, unique: fuser::RequestId) -> Result<(), fuser::Errno> {
        self.core.interrupt(unique.0);
        Ok(())
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.op(Op::Release { fh: Fh(fh.0) }, KernelReply::Empty(reply));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // fallocate(2)'s mode bits (linux/falloc.h).
        const KEEP_SIZE: i32 = 0x01;
        const PUNCH_HOLE: i32 = 0x02;
        const ZERO_RANGE: i32 = 0x10;
        let how = match mode {
            0 => Allocate::Extend,
            KEEP_SIZE => Allocate::KeepSize,
            m if m == PUNCH_HOLE | KEEP_SIZE => Allocate::PunchHole,
            ZERO_RANGE => Allocate::ZeroRange { keep_size: false },
            m if m == ZERO_RANGE | KEEP_SIZE => Allocate::ZeroRange { keep_size: true },
            // Collapsing or inserting ranges, unsharing, or a hole that
            // would change the size (the kernel refuses that one itself).
            _ => return reply.error(errno(Errno::NotSup)),
        };
        let op = Op::Allocate {
            fh: Fh(fh.0),
            offset,
            length,
            how,
        };
        self.op(op, KernelReply::Empty(reply));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.op(Op::Fsync { fh: Fh(fh.0) }, KernelReply::Empty(reply));
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.op(
            Op::ReadDir {
                ino: ino(i),
                offset,
            },
            KernelReply::Dir(reply),
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.op(
            Op::ReadDir {
                ino: ino(i),
                offset,
            },
            KernelReply::DirPlus(reply),
        );
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The host makes every change durable at once: a directory's
        // entries are among them.
        self.op(Op::SyncAll, KernelReply::Empty(reply));
    }

    // access(2): ENOSYS makes the kernel stop asking for the whole
    // mount and allow what the mode bits allow.
    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.error(fuser::Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.op(Op::Statfs, KernelReply::Statfs(reply));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match Self::name(name) {
            Ok(name) => self.op(
                Op::Create {
                    parent: ino(parent),
                    name,
                    mode: perm(mode, umask),
                    // The kernel asks only when its cache says the name is
                    // free, which another client may have changed since.
                    exclusive: flags & rustix::fs::OFlags::EXCL.bits() as i32 != 0,
                    truncate: flags & rustix::fs::OFlags::TRUNC.bits() as i32 != 0,
                    caller: Some(caller(req)),
                },
                KernelReply::Create(reply),
            ),
            Err(e) => reply.error(e),
        }
    }
}

// ---------------------------------------------------------- invalidations

/// An invalidation for the kernel.
pub(super) enum Notice {
    /// Data and attributes of an inode.
    Inode(Ino),
    /// A name in a directory.
    Entry(Ino, Name),
}

/// Starts the thread that passes the core's invalidations to the kernel.
pub(super) fn start_notifier(
    notices: std::sync::mpsc::Receiver<Notice>,
    notifier: fuser::Notifier,
) -> Result<(), MountError> {
    std::thread::Builder::new()
        .name("wormhole-inval".into())
        .spawn(move || {
            for notice in notices {
                // The kernel may have dropped the inode or entry
                // already; nothing to do then.
                let result = match &notice {
                    Notice::Inode(ino) => notifier.inval_inode(fuser::INodeNo(ino.0), 0, 0),
                    Notice::Entry(parent, name) => notifier.inval_entry(
                        fuser::INodeNo(parent.0),
                        std::os::unix::ffi::OsStrExt::from_bytes(name.as_bytes()),
                    ),
                };
                if let Err(e) = result {
                    trace!(error = %e, "kernel invalidation not applied");
                }
            }
        })
        .map_err(MountError::Thread)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for t in [
            Timestamp { secs: 0, nanos: 0 },
            Timestamp {
                secs: 1_700_000_000,
                nanos: 123_456_789,
            },
            Timestamp {
                secs: -5,
                nanos: 250_000_000,
            },
        ] {
            assert_eq!(timestamp(system_time(t)), t);
        }
    }

    #[test]
    fn permission_bits_only() {
        assert_eq!(perm(0o100644, 0o022), 0o644);
        assert_eq!(perm(0o40777, 0o022), 0o755);
    }
}
