//! The simulated world with its checker: the kernel models, the file
//! identity and content history, and every invariant.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;
use wormhole_core::Instant;
use wormhole_core::cache::Kind;
use wormhole_core::client::{Answer, ClientConfig, ClientEvent, Fh, Op, Req};
use wormhole_core::host::memfs::MemFs;
use wormhole_core::host::{BatchOp, FsAttr, FsOk, FsOp, HostConfig, RelPath};
use wormhole_core::lock::scope_node;
use wormhole_core::proto::{
    Attr, Errno, FileKey, FileKind, LockKind, LockScope, Name, NodeId, OpenFor, SetAttr, SetTime,
};
use wormhole_core::testkit::{FsRecord, World};
use wormhole_core::vfs::Ino;

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Simulated time.
    pub at: Instant,
    /// What broke.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {:?}: {}", self.at, self.what)
    }
}

/// What a run did (summed over seeds, to prove the workload reaches every
/// corner it is meant to).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Kernel requests sent.
    pub ops: u64,
    /// Answered with success.
    pub ok: u64,
    /// Answered with an error, by errno.
    pub errors: BTreeMap<String, u64>,
    /// Commits the disk executed.
    pub commits: u64,
    /// Staging operations whose fencing token was checked.
    pub fenced: u64,
    /// Flush/Fsync/Release acknowledgements whose writes were checked.
    pub acks_checked: u64,
    /// Whole-file reads checked against the history (close-to-open).
    pub reads_checked: u64,
    /// Reads that gave the program less than the client answered,
    /// because its kernel's size for the inode was smaller.
    pub reads_cut_by_kernel_size: u64,
    /// Reads of extended attributes checked against what was set.
    pub xattr_reads_checked: u64,
    /// Of those, reads of a value set before a commit of the file (which
    /// must carry it).
    pub xattrs_across_commits: u64,
    /// Appends found at the end of a version another writer committed
    /// after they were written (two clients appending to one file).
    pub appends_after_another: u64,
    /// Files created and opened with `O_APPEND` (a shell's `>>`).
    pub append_creates: u64,
    /// Locks a program on the host took on the locked updates' file.
    pub host_program_locks: u64,
    /// Its tries a client's lock kept out.
    pub host_program_refused: u64,
    /// Small reads inside a file (a random reader's) checked as a slice
    /// of one commit.
    pub slices_checked: u64,
    /// Attributes answered to a kernel whose age was checked against the
    /// cache ttl.
    pub attrs_checked: u64,
    /// Of those, reads that had an acknowledged close to respect.
    pub reads_after_ack: u64,
    /// Partitions shorter than the lock ttl.
    pub short_partitions: u64,
    /// Partitions longer than the lock ttl.
    pub long_partitions: u64,
    /// Partitions the connection does not notice.
    pub silent_partitions: u64,
    /// Answers given while the client found its host unreachable.
    pub offline_answers: u64,
    /// Host crashes.
    pub host_crashes: u64,
    /// Files a host crash took back to an older commit (closed, not
    /// fsynced, inside the group commit's window).
    pub rolled_back: u64,
    /// Files an acknowledged fsync covered, checked after a host crash.
    pub fsyncs_kept: u64,
    /// Client crashes.
    pub client_crashes: u64,
    /// Sessions moved to a new path (a relayed mount going direct).
    pub path_moves: u64,
    /// Commits replayed from their staging operations and found whole.
    pub commits_replayed: u64,
    /// Commits that carried mode and times set while writing, checked on
    /// the committed file.
    pub sets_committed: u64,
    /// Flushes that reported a loss, whose epoch was checked for holes.
    pub losses_checked: u64,
    /// Changes made by local programs on the host.
    pub local_changes: u64,
    /// Times the host's disk filled up.
    pub disk_full: u64,
    /// Injected disk write failures.
    pub disk_failures: u64,
    /// Opens with `O_TRUNC`.
    pub truncating_opens: u64,
    /// Runs whose liveness phase converged.
    pub converged: u64,
    /// Advisory locks granted to locked updates, checked for exclusion.
    pub locks_granted: u64,
    /// Reads under such a lock checked against the last holder's write.
    pub locked_reads: u64,
    /// Writes of locked updates refused because their lock was lost with
    /// its session (invariant 14).
    pub lost_lock_writes: u64,
    /// Lock waits of locked updates a signal ended (EINTR).
    pub lock_waits_interrupted: u64,
    /// Unlocks another thread made while a locked update waited.
    pub other_thread_unlocks: u64,
    /// Files a client created under a directory lease and the host
    /// applied from its stream.
    pub files_streamed: u64,
    /// Unlinks answered under a directory lease and applied by the host.
    pub unlinks_streamed: u64,
    /// Directories removed under a directory lease and applied by the host.
    pub rmdirs_streamed: u64,
    /// A leased directory's own mode and times set by its holder and
    /// applied by the host from its stream.
    pub dir_sets_streamed: u64,
    /// Hard links made to the locked file.
    pub locked_file_links: u64,
    /// Directories whose lease came with their mkdir's answer.
    pub dirs_leased_with_mkdir: u64,
    /// Directories a sweep came to with their lease taken ahead.
    pub dirs_leased_ahead: u64,
    /// Trees swept against their listing's order.
    pub sweeps_reversed: u64,
    /// Acknowledged closes checked once the host applied what they
    /// covered (a lease holder answers closes before that).
    pub acks_deferred: u64,
    /// Hard links made (`link` answered).
    pub links: u64,
    /// Commits of a file with several names (written in place).
    pub in_place_commits: u64,
    /// Files answered under a lease and refused by the host afterwards,
    /// reported to nobody's handle (a `CreateLost` event).
    pub creates_lost: u64,
    /// Directories made while the host held 16 or more leases (a
    /// client's table full: the next lease takes the coldest one's
    /// place).
    pub leases_full: u64,
}

impl FsStats {
    /// Adds another run's counts.
    pub fn merge(&mut self, o: &FsStats) {
        self.ops += o.ops;
        self.ok += o.ok;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.commits += o.commits;
        self.commits_replayed += o.commits_replayed;
        self.leases_full += o.leases_full;
        self.sets_committed += o.sets_committed;
        self.links += o.links;
        self.in_place_commits += o.in_place_commits;
        self.locks_granted += o.locks_granted;
        self.locked_reads += o.locked_reads;
        self.lost_lock_writes += o.lost_lock_writes;
        self.lock_waits_interrupted += o.lock_waits_interrupted;
        self.other_thread_unlocks += o.other_thread_unlocks;
        self.losses_checked += o.losses_checked;
        self.local_changes += o.local_changes;
        self.disk_full += o.disk_full;
        self.disk_failures += o.disk_failures;
        self.truncating_opens += o.truncating_opens;
        self.fenced += o.fenced;
        self.acks_checked += o.acks_checked;
        self.reads_checked += o.reads_checked;
        self.reads_cut_by_kernel_size += o.reads_cut_by_kernel_size;
        self.xattr_reads_checked += o.xattr_reads_checked;
        self.xattrs_across_commits += o.xattrs_across_commits;
        self.appends_after_another += o.appends_after_another;
        self.append_creates += o.append_creates;
        self.host_program_locks += o.host_program_locks;
        self.host_program_refused += o.host_program_refused;
        self.slices_checked += o.slices_checked;
        self.attrs_checked += o.attrs_checked;
        self.reads_after_ack += o.reads_after_ack;
        self.short_partitions += o.short_partitions;
        self.long_partitions += o.long_partitions;
        self.offline_answers += o.offline_answers;
        self.silent_partitions += o.silent_partitions;
        self.host_crashes += o.host_crashes;
        self.rolled_back += o.rolled_back;
        self.fsyncs_kept += o.fsyncs_kept;
        self.client_crashes += o.client_crashes;
        self.path_moves += o.path_moves;
        self.converged += o.converged;
        self.files_streamed += o.files_streamed;
        self.unlinks_streamed += o.unlinks_streamed;
        self.rmdirs_streamed += o.rmdirs_streamed;
        self.dir_sets_streamed += o.dir_sets_streamed;
        self.dirs_leased_with_mkdir += o.dirs_leased_with_mkdir;
        self.dirs_leased_ahead += o.dirs_leased_ahead;
        self.sweeps_reversed += o.sweeps_reversed;
        self.locked_file_links += o.locked_file_links;
        self.acks_deferred += o.acks_deferred;
        self.creates_lost += o.creates_lost;
    }
}

/// A write the kernel had acknowledged: its bytes, where, and how many
/// commits the disk had executed when it was sent.
#[derive(Clone, Debug)]
struct WriteRec {
    /// Order of sending (writes through several handles interleave).
    seq: u64,
    /// The handle it went through.
    fh: Fh,
    offset: u64,
    data: Vec<u8>,
    after: usize,
    /// Through an `O_APPEND` handle: it goes at the file's end, wherever
    /// the kernel sent it.
    append: bool,
    /// The smallest size the file was cut to by this kernel since its
    /// last flush of it (an append then may start below the end of the
    /// version its commit replaces: the cut comes first).
    cut: Option<usize>,
    /// This kernel sent the file nothing but appends since its last
    /// flush of it: the commit that holds the append keeps the version it
    /// replaced whole, below it.
    keeps_base: bool,
}

/// An open file handle in a kernel model.
#[derive(Clone, Debug)]
struct HandleModel {
    ino: Ino,
    /// The file it was opened on (as the kernel believed).
    file: Option<usize>,
    /// The oldest commit of that file a read through it may show.
    min_index: usize,
    /// The same, from the record lock its client took since (invariant
    /// 12): an answer the cache gives while the host is out of reach is
    /// held to `min_index` only.
    locked_min: usize,
    /// Writes acknowledged and not yet covered by a flush.
    writes: Vec<WriteRec>,
    /// The last request sent before it existed (its open was answered).
    opened: u64,
    /// Opened with `O_APPEND`.
    append: bool,
    /// Opened for writing (or made by a create): the kernel sends writes
    /// through no other.
    write: bool,
}

/// What the kernel of one mount holds.
#[derive(Clone, Debug, Default)]
struct Kernel {
    nlookup: BTreeMap<Ino, u64>,
    /// Open handles per inode.
    open: BTreeMap<Ino, u32>,
    /// The file each inode stands for, as the kernel was told.
    identity: BTreeMap<Ino, usize>,
    /// When each inode's identity was last told (sequence number): a
    /// host restart rebinds inodes by path, perhaps to other files.
    identity_at: BTreeMap<Ino, u64>,
    kinds: BTreeMap<Ino, FileKind>,
    handles: BTreeMap<Fh, HandleModel>,
    /// Per inode: sequence of the last write or truncate sent, and of the
    /// last flush-like request answered that was sent after it.
    dirty: BTreeMap<Ino, (u64, u64)>,
    /// The same per file: an inode may be forgotten with a size change
    /// still pending, and the file looked up again under a new one (or
    /// the old number given to another file).
    dirty_files: BTreeMap<usize, (u64, u64)>,
    /// Files truncated by an open with nothing written to them since
    /// (with the open's sequence): a plain FLUSH leaves them as they are
    /// (see the client's dispatch).
    emptied: BTreeMap<Option<usize>, u64>,
    /// Per file: when an `O_TRUNC` open of it was last answered (its
    /// truncation joins the handle's first transaction, so it stays
    /// pending, whatever was sent since, until a flush after it).
    truncated_at_open: BTreeMap<usize, u64>,
    /// Answers taken from the world (to compare with its reply count).
    answered: u64,
    /// Every write sent, per inode: (sequence, start, end).
    /// Keyed by file, not inode: two inodes (one orphaned) may stand for
    /// one file, and their writes share its transaction.
    issued: BTreeMap<Option<usize>, Vec<(u64, usize, usize)>>,
    /// The size of each inode as this kernel has it, and until when it
    /// trusts it (the ttl of the answer that brought it). Linux reads
    /// nothing past an inode's size; with `auto_inval_data` it asks the
    /// size again before a read only once it no longer trusts it. An
    /// inode without one here is one the kernel would ask about first:
    /// its reads are taken whole.
    sizes: BTreeMap<Ino, (u64, Instant)>,
    /// The size of each inode as Linux keeps it (`i_size`): the last one
    /// answered or made by its own writes and truncates, trusted or not.
    /// An `O_APPEND` write is sent at it.
    i_size: BTreeMap<Ino, u64>,
    /// How many of its client's inode invalidations it has applied.
    invalidations_applied: usize,
    /// Changes of a size made here (writes, truncates, `O_TRUNC`
    /// opens), counted, and the count at each inode's last one: Linux
    /// ignores attributes answered to a request sent before one.
    size_changes: u64,
    size_changed: BTreeMap<Ino, u64>,
}

impl Kernel {
    /// This kernel changed `ino`'s size itself: what it trusted is gone.
    fn size_changed_here(&mut self, ino: Ino) {
        self.sizes.remove(&ino);
        self.size_changes += 1;
        self.size_changed.insert(ino, self.size_changes);
    }

    fn referenced(&self, ino: Ino) -> bool {
        self.nlookup.get(&ino).is_some_and(|&n| n > 0)
            || self.open.get(&ino).is_some_and(|&n| n > 0)
    }

    /// Nothing written through `ino`, nor to its file through another
    /// inode, waits for a flush.
    fn clean(&self, ino: Ino) -> bool {
        let done = |d: Option<&(u64, u64)>| d.is_none_or(|&(w, f)| f > w);
        done(self.dirty.get(&ino))
            && self
                .identity
                .get(&ino)
                .is_none_or(|file| done(self.dirty_files.get(file)))
    }

    /// A write or size change of `ino` (file `file`) sent as `seq`.
    fn dirtied(&mut self, ino: Ino, file: Option<usize>, seq: u64) {
        self.dirty.entry(ino).or_default().0 = seq;
        if let Some(f) = file {
            self.dirty_files.entry(f).or_default().0 = seq;
        }
    }

    /// A flush-like request sent as `seq` has made what came before it
    /// durable (or reported it lost).
    fn cleaned(&mut self, ino: Ino, file: Option<usize>, seq: u64) {
        let d = self.dirty.entry(ino).or_default();
        d.1 = d.1.max(seq);
        if let Some(f) = file {
            let d = self.dirty_files.entry(f).or_default();
            d.1 = d.1.max(seq);
        }
    }
}

/// Why a request was sent, for checking its answer.
#[derive(Clone, Debug)]
enum Ctx {
    Plain,
    /// Create (and open): the acknowledged closes when it was sent, since
    /// which file it opens is known only from its answer.
    Create {
        acked: BTreeMap<usize, usize>,
        /// With `O_APPEND` (FUSE tells the client with each write).
        append: bool,
    },
    /// Open: the file the kernel meant, and the commit a read must reach.
    Open {
        file: Option<usize>,
        min_index: usize,
    },
    /// Write through a handle.
    Write {
        fh: Fh,
        rec: WriteRec,
    },
    /// An extended attribute's change or read ([`xattrs`]).
    Xattr(xattrs::XattrCtx),
    /// Flush, Fsync, Release: the writes it must have made durable.
    Flush {
        ino: Ino,
        file: Option<usize>,
        writes: Vec<WriteRec>,
        seq: u64,
        /// A plain FLUSH while the file's only change is a truncating
        /// open's: it commits nothing.
        bare: bool,
    },
    /// A size change.
    Truncate {
        ino: Ino,
        file: Option<usize>,
        seq: u64,
        /// The new size is not zero.
        grows: bool,
    },
    /// A whole-file read, checkable if nothing local was dirty.
    Read {
        fh: Fh,
        checkable: bool,
    },
    /// An unlock: it commits what was written before it first.
    Unlock {
        ino: Ino,
        file: Option<usize>,
        seq: u64,
    },
}

#[derive(Clone, Debug)]
struct Pending {
    /// The kernel's request.
    req: Req,
    op: Op,
    ctx: Ctx,
    /// The client's count of inode invalidations when it was sent: the
    /// kernel ignores attributes answered to a request sent before an
    /// invalidation of their inode (Linux's `attr_version`).
    invalidations: usize,
    /// The kernel's count of size changes made here when it was sent
    /// (the same rule).
    size_changes: u64,
}

/// File identities and their committed contents, rebuilt from the disk's
/// operation log.
#[derive(Clone, Debug, Default)]
struct Files {
    by_key: BTreeMap<FileKey, usize>,
    /// Files made under a lease before the host restarted, by their
    /// made-up keys: a client that has not yet reconnected still answers
    /// for them (see [`Sim::restart_host`]).
    before_restart: BTreeMap<FileKey, usize>,
    kinds: Vec<FileKind>,
    /// Per file: its contents in commit order (a created file starts
    /// empty).
    history: Vec<Vec<Vec<u8>>>,
    /// Every commit, in disk order: (file, index in its history), and the
    /// client whose transaction it was (`None`: a local program's change).
    commits: Vec<(usize, usize, Option<usize>)>,
    /// Per file: the history index an acknowledged close requires.
    acked: BTreeMap<usize, usize>,
    /// Per file: the history index an acknowledged fsync requires to
    /// survive a host crash (a close only makes a commit visible).
    durable: BTreeMap<usize, usize>,
}

impl Files {
    fn register(&mut self, key: FileKey, kind: FileKind, content: Option<Vec<u8>>) -> usize {
        if let Some(&f) = self.by_key.get(&key) {
            return f;
        }
        let f = self.kinds.len();
        self.kinds.push(kind);
        self.history.push(content.into_iter().collect());
        self.by_key.insert(key, f);
        f
    }
}

/// What a local program on the host does to the shared folder.
#[derive(Clone)]
pub enum Local {
    /// Saves a file atomically (a new file renamed over it).
    Replace(RelPath, Vec<u8>),
    /// Appends in place.
    Append(RelPath, Vec<u8>),
    /// Truncates in place.
    Truncate(RelPath, u64),
    /// Deletes a file.
    Delete(RelPath),
    /// Renames.
    Rename(RelPath, RelPath),
    /// Gives a file another name (a hard link).
    Link(RelPath, RelPath),
}

/// Writes a failed flush reported lost, kept to check every commit of
/// their writer and file, then and later (invariant 9).
#[derive(Clone, Debug)]
struct Loss {
    client: usize,
    file: usize,
    /// The file's last local change when the loss was reported.
    local: u64,
    writes: Vec<WriteRec>,
    /// The writes (by sequence number) a commit of the writer was seen
    /// to hold, and the last such commit (its index in the file's
    /// history): they were not lost, and another writer's commit after
    /// that one may have replaced them (the commit before an unlock lands
    /// what no flush vouched for, and a failed close after it reports
    /// everything since its last flush).
    landed: BTreeMap<u64, usize>,
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Local::Replace(p, d) => write!(f, "Replace({p:?}, {} bytes)", d.len()),
            Local::Append(p, d) => write!(f, "Append({p:?}, {} bytes)", d.len()),
            Local::Truncate(p, n) => write!(f, "Truncate({p:?}, {n})"),
            Local::Delete(p) => write!(f, "Delete({p:?})"),
            Local::Rename(a, b) => write!(f, "Rename({a:?}, {b:?})"),
            Local::Link(a, b) => write!(f, "Link({a:?}, {b:?})"),
        }
    }
}

/// An acknowledged close whose writes the host did not have yet: a lease
/// holder answers closes of the files it creates before its stream is
/// applied. Checked again after every event; it must hold by the end of
/// the liveness phase unless its client crashed, the host crashed, or the
/// client reported a refused create.
#[derive(Clone, Debug)]
struct Deferred {
    client: usize,
    file: Option<usize>,
    writes: Vec<WriteRec>,
}

/// A transaction replayed from the disk's log: the content it was staged
/// from, and that content with the transaction's staging operations
/// applied, in the order the disk executed them.
#[derive(Clone, Debug)]
struct Replay {
    base_key: FileKey,
    base: Vec<u8>,
    staged: Vec<u8>,
}

/// The world, the kernels' models and the checker.
pub struct Sim {
    /// The simulated world.
    pub w: World,
    kernels: Vec<Kernel>,
    pending: BTreeMap<(usize, Req), Pending>,
    files: Files,
    stats: FsStats,
    trace: Option<Vec<String>>,
    echo: bool,
    seq: u64,
    /// When each client last received each (node, version) of attributes.
    delivered: BTreeMap<(usize, NodeId, u64), Instant>,
    /// The longest a client may serve attributes from its cache.
    attr_ttl: Duration,
    /// Transactions staged on the disk, replayed.
    replays: BTreeMap<wormhole_core::proto::TxnId, Replay>,
    /// Losses reported so far.
    losses: Vec<Loss>,
    /// Acknowledged closes waiting for the host to apply a lease's stream.
    deferred: Vec<Deferred>,
    /// Per file: the request sequence at its last change by a local
    /// program (which may cut or replace what clients wrote).
    local_seq: BTreeMap<usize, u64>,
    /// Per (client, file): requests of its kernel that may commit (a
    /// write, read, flush, fsync, close or attribute change), less the
    /// commits made.
    asked: BTreeMap<(usize, usize), u64>,
    /// The locked updates of [`LOCKED`] ([`locks`]).
    locks: locks::LockModel,
    /// Extended attributes ([`xattrs`]).
    xattrs: xattrs::XattrModel,
    /// The next create opens its file with `O_APPEND`
    /// ([`Sim::create_appending`]).
    create_appends: bool,
}

mod locks;
pub(super) use locks::LOCKED;
mod xattrs;
pub(super) use xattrs::xattr_op;

fn name(s: &str) -> Name {
    Name::new(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// The device number a client gives the files it makes under a lease
/// until the host has them (`LOCAL_DEV` in the client's lease module).
const LOCAL_DEV: u64 = u64::MAX;

/// The parts of `[start, end)` that none of `covered` covers.
fn uncovered(start: usize, end: usize, covered: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut parts = vec![(start, end)];
    for &(cs, ce) in covered {
        parts = parts
            .into_iter()
            .flat_map(|(s, e)| {
                if ce <= s || cs >= e {
                    vec![(s, e)]
                } else {
                    [(s, cs.max(s)), (ce.min(e), e)]
                        .into_iter()
                        .filter(|(a, b)| a < b)
                        .collect()
                }
            })
            .collect();
    }
    parts
}

/// Writes a file into a disk directly (initial content).
fn seed_file(disk: &mut MemFs, path: &RelPath, data: &[u8]) {
    let seeded = disk.local_replace(path, data);
    assert!(seeded.is_ok(), "seeding {path:?}: {seeded:?}");
}

/// Every entry beneath `dir` on the disk, depth first.
fn walk(disk: &mut MemFs, dir: &RelPath, out: &mut Vec<(RelPath, FsAttr)>) {
    let mut cookie = 0;
    loop {
        let Ok(FsOk::Listing { entries, next }) = disk.execute(FsOp::List {
            path: dir.clone(),
            cookie,
            max: 512,
        }) else {
            return;
        };
        for (n, a) in entries {
            let p = dir.join(&n);
            if a.kind == FileKind::Dir {
                walk(disk, &p, out);
            }
            out.push((p, a));
        }
        match next {
            Some(c) => cookie = c,
            None => return,
        }
    }
}

fn summary(r: &Result<Answer, Errno>) -> String {
    match r {
        Ok(Answer::Data(d)) => format!("Data({} bytes, {:016x})", d.len(), crate::seeds::hash(d)),
        Ok(Answer::Entry { ino, attr, .. }) => {
            format!("Entry({ino:?}, {:?} {} bytes)", attr.kind, attr.size)
        }
        Ok(Answer::Created { ino, attr, fh, .. }) => {
            format!("Created({ino:?}, {fh:?}, {} bytes)", attr.size)
        }
        Ok(Answer::Attr { attr, .. }) => format!("Attr({:?} {} bytes)", attr.kind, attr.size),
        Ok(Answer::Dir(items)) => {
            let names: Vec<String> = items
                .iter()
                .map(|i| format!("{}={}", String::from_utf8_lossy(i.name.as_bytes()), i.ino.0))
                .collect();
            format!("Dir[{}]", names.join(" "))
        }
        Ok(a) => format!("{a:?}"),
        Err(e) => format!("Err({e:?})"),
    }
}

fn op_summary(op: &Op) -> String {
    match op {
        Op::Write {
            fh,
            offset,
            data,
            append,
        } => {
            let how = if *append { " appended" } else { "" };
            format!("Write({fh:?}, @{offset}, {} bytes{how})", data.len())
        }
        Op::Lookup { parent, name } | Op::Unlink { parent, name } => format!(
            "{}({parent:?}, {})",
            if matches!(op, Op::Lookup { .. }) {
                "Lookup"
            } else {
                "Unlink"
            },
            String::from_utf8_lossy(name.as_bytes())
        ),
        other => format!("{other:?}"),
    }
}

impl Sim {
    /// A world from `seed`: `clients` mounts, network delays up to
    /// `max_delay`, and a disk holding `files` (path components, content).
    pub fn new(seed: u64, clients: usize, max_delay: Duration, files: &[(&[&str], &[u8])]) -> Self {
        let mut disk = MemFs::new(1 << 24);
        let mut dirs = BTreeSet::new();
        for (path, data) in files {
            let names: Vec<Name> = path.iter().map(|s| name(s)).collect();
            for i in 1..names.len() {
                let d = RelPath::from(names[..i].to_vec());
                if dirs.insert(d.clone()) {
                    let _ = disk.execute(FsOp::Mkdir {
                        path: d,
                        mode: 0o755,
                        owner: None,
                    });
                }
            }
            seed_file(&mut disk, &RelPath::from(names), data);
        }
        let mut fs = Files::default();
        let mut found = Vec::new();
        if let Ok(FsOk::Attr(root)) = disk.execute(FsOp::Stat {
            path: RelPath::root(),
        }) {
            found.push((RelPath::root(), root));
        }
        walk(&mut disk, &RelPath::root(), &mut found);
        let mut lock_model = locks::LockModel::default();
        for (p, a) in found {
            let content = disk.read_file(&p).map(<[u8]>::to_vec);
            let f = fs.register(a.key, a.kind, content);
            if p == RelPath::from(vec![name(LOCKED)]) {
                lock_model.file = Some(f);
            }
        }
        let mut client_cfg = ClientConfig::default();
        // Every other seed, writes keep nothing the host acknowledged, so
        // reads of a file being written take the commit-first path.
        if seed % 2 == 1 {
            client_cfg.write.keep_acked = 0;
        }
        // Half the seeds commit small files as one whole write, half
        // always take the lock first.
        if seed % 4 >= 2 {
            client_cfg.write.whole_writes = false;
        }
        // Most seeds take directory leases where files are created.
        client_cfg.leases = seed % 5 != 4;
        // A third of the seeds hold every change's reply until the disk
        // has it (`--sync-every-close`); the rest use the group commit.
        let host_cfg = HostConfig {
            sync_window: if seed.is_multiple_of(3) {
                Duration::ZERO
            } else {
                HostConfig::default().sync_window
            },
            ..HostConfig::default()
        };
        // Attributes reach the kernel from the attribute cache and from
        // cached listings.
        let attr_ttl = client_cfg
            .cache
            .ttl(Kind::Attr)
            .max(client_cfg.cache.ttl(Kind::Dir));
        let mut w = World::new(seed, disk, 0, host_cfg, client_cfg);
        w.record_fs = true;
        w.record_attrs = true;
        w.max_delay = max_delay;
        for _ in 0..clients {
            w.add_client();
        }
        let mut sim = Sim {
            w,
            kernels: vec![Kernel::default(); clients],
            pending: BTreeMap::new(),
            files: fs,
            stats: FsStats::default(),
            trace: None,
            echo: false,
            seq: 0,
            delivered: BTreeMap::new(),
            attr_ttl,
            replays: BTreeMap::new(),
            losses: Vec::new(),
            deferred: Vec::new(),
            local_seq: BTreeMap::new(),
            asked: BTreeMap::new(),
            locks: lock_model,
            xattrs: xattrs::XattrModel::default(),
            create_appends: false,
        };
        // The root (and the scan's listing) came before recording started
        // for nothing: register what the log holds.
        let _ = sim.check();
        sim
    }

    /// Records a trace (printing it as it goes with `echo`).
    pub fn with_trace(mut self, echo: bool) -> Self {
        self.trace = Some(Vec::new());
        self.echo = echo;
        self
    }

    /// The trace so far (empty unless [`Self::with_trace`]).
    pub fn trace(&self) -> &[String] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// What the run did.
    pub fn stats(&self) -> &FsStats {
        &self.stats
    }

    /// Number of clients.
    pub fn clients(&self) -> usize {
        self.kernels.len()
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            let l = format!(
                "{:>12.3} {}",
                self.w
                    .now
                    .saturating_duration_since(Instant::ZERO)
                    .as_secs_f64(),
                line()
            );
            if self.echo {
                println!("{l}");
            }
            t.push(l);
        }
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            at: self.w.now,
            what,
        }
    }

    // ------------------------------------------------------------ queries

    /// Inodes client `c`'s kernel references, of `kind`.
    pub fn referenced(&self, c: usize, kind: FileKind) -> Vec<Ino> {
        let k = &self.kernels[c];
        let mut v: Vec<Ino> = k
            .nlookup
            .iter()
            .filter(|&(ino, &n)| n > 0 && k.kinds.get(ino) == Some(&kind))
            .map(|(&i, _)| i)
            .filter(|&i| self.workload_kind(c, i, kind))
            .collect();
        if kind == FileKind::Dir {
            v.insert(0, Ino::ROOT);
        }
        v
    }

    /// The inode client `c` knows `parent`'s entry `name` as, if any.
    pub fn child(&self, c: usize, parent: Ino, name: &Name) -> Option<Ino> {
        self.w.clients[c].core.vfs()?.child(parent, name)
    }

    /// Counts a directory a sweep comes to with its lease already held
    /// by client `c`: asked for ahead, as the sweep listed an earlier
    /// sibling.
    pub fn note_swept_ahead(&mut self, c: usize, dir: Ino) {
        let core = &self.w.clients[c].core;
        let node = core.vfs().and_then(|v| v.get(dir)).map(|i| i.node);
        if node.is_some_and(|n| core.holds_lease(n)) {
            self.stats.dirs_leased_ahead += 1;
        }
    }

    /// Counts a tree swept against its listing's order.
    pub fn note_sweep_reversed(&mut self) {
        self.stats.sweeps_reversed += 1;
    }

    /// Counts a directory made while the host holds at least `full`
    /// leases.
    pub fn note_leases(&mut self, full: usize) {
        if self.w.host_up && self.w.host.leases() >= full {
            self.stats.leases_full += 1;
        }
    }

    /// Open handles of client `c`.
    pub fn handles(&self, c: usize) -> Vec<Fh> {
        self.kernels[c]
            .handles
            .iter()
            .filter(|(_, h)| h.file.is_none() || h.file != self.locks.file)
            .map(|(&fh, _)| fh)
            .collect()
    }

    /// Client `c`'s open handles that its kernel sends writes through.
    pub fn writable_handles(&self, c: usize) -> Vec<Fh> {
        let handles = self.handles(c);
        handles
            .into_iter()
            .filter(|fh| self.kernels[c].handles.get(fh).is_some_and(|h| h.write))
            .collect()
    }

    /// Where client `c`'s kernel sends a write through `fh` that a
    /// program makes at `offset`, and whether as an append: at the
    /// inode's size for an `O_APPEND` handle, as Linux does (its own idea
    /// of the size, which may be older than the file's).
    pub fn write_offset(&self, c: usize, fh: Fh, offset: u64) -> (u64, bool) {
        let k = &self.kernels[c];
        match k.handles.get(&fh) {
            Some(h) if h.append => (k.i_size.get(&h.ino).copied().unwrap_or(0), true),
            _ => (offset, false),
        }
    }

    /// The inode client `c`'s handle `fh` is open on.
    pub fn handle_ino(&self, c: usize, fh: Fh) -> Option<Ino> {
        self.kernels[c].handles.get(&fh).map(|h| h.ino)
    }

    /// Whether client `c` has a handle, or a pending open or link, on
    /// `ino` (its kernel holds the inode meanwhile).
    pub fn busy(&self, c: usize, ino: Ino) -> bool {
        // A link holds its source too: the answer names the same inode.
        self.kernels[c].open.get(&ino).is_some_and(|&n| n > 0)
            || self.pending.iter().any(|((pc, _), p)| {
                *pc == c
                    && matches!(p.op, Op::Open { ino: i, .. } | Op::Link { ino: i, .. } if i == ino)
            })
    }

    // ------------------------------------------------------------- inputs

    /// Sends create `op` from client `c` as `open(O_CREAT|O_APPEND)` does
    /// (a shell's `>>`): the client learns `O_APPEND` only from the
    /// flags each write carries, whether the file is new or not.
    pub fn create_appending(&mut self, c: usize, op: Op) -> Result<Req, Violation> {
        debug_assert!(matches!(op, Op::Create { .. }));
        self.create_appends = true;
        let sent = self.op(c, op);
        self.create_appends = false;
        sent
    }

    /// Sends a kernel operation from client `c`, then checks everything.
    pub fn op(&mut self, c: usize, op: Op) -> Result<Req, Violation> {
        self.seq += 1;
        let seq = self.seq;
        self.lock_issued(c, &op);
        // Invariant 10's record: which files this request may commit.
        let k = &self.kernels[c];
        let may_commit = match &op {
            Op::Write { fh, .. }
            | Op::Read { fh, .. }
            | Op::Flush { fh, owner: None }
            | Op::Fsync { fh }
            | Op::Release { fh } => k.handles.get(fh).and_then(|h| h.file),
            Op::SetAttr { ino, .. } => k.identity.get(ino).copied(),
            _ => None,
        };
        if let Some(f) = may_commit {
            *self.asked.entry((c, f)).or_default() += 1;
        }
        let commits = self.files.commits.len();
        let mut xattr = self.xattr_sent(c, &op, seq);
        let k = &mut self.kernels[c];
        let ctx = match &op {
            Op::SetXattr { .. } | Op::RemoveXattr { .. } | Op::GetXattr { .. } => {
                xattr.take().map_or(Ctx::Plain, Ctx::Xattr)
            }
            Op::Open { ino, truncate, .. } => {
                let file = k.identity.get(ino).copied();
                let min_index = file
                    .and_then(|f| self.files.acked.get(&f).copied())
                    .unwrap_or(0);
                if *truncate {
                    k.size_changed_here(*ino);
                    k.i_size.insert(*ino, 0);
                    // O_TRUNC: a size change that lasts until the handle's
                    // first flush commits it (the file stays dirty, from
                    // the open's answer: the truncation joins a
                    // transaction then, so a close sent meanwhile does not
                    // cover it).
                    self.stats.truncating_opens += 1;
                    k.issued.entry(file).or_default().push((seq, 0, usize::MAX));
                    for h in k.handles.values_mut().filter(|h| h.ino == *ino) {
                        h.writes.clear();
                    }
                }
                Ctx::Open { file, min_index }
            }
            Op::Write {
                fh,
                offset,
                data,
                append,
            } => {
                let append = *append;
                let file = k.handles.get(fh).and_then(|h| h.file);
                let flushed = file.and_then(|f| k.dirty_files.get(&f)).map_or(0, |d| d.1);
                let since_flush: Vec<(usize, usize)> = k
                    .issued
                    .get(&file)
                    .into_iter()
                    .flatten()
                    .filter(|&&(s, _, _)| s > flushed)
                    .map(|&(_, at, end)| (at, end))
                    .collect();
                let opened_empty = file
                    .and_then(|f| k.truncated_at_open.get(&f))
                    .is_some_and(|&at| at > flushed);
                let cut = since_flush
                    .iter()
                    .filter(|&&(_, end)| end == usize::MAX)
                    .map(|&(at, _)| at)
                    .chain(opened_empty.then_some(0))
                    .min();
                let keeps_base = since_flush.is_empty() && !opened_empty;
                if let Some((ino, file)) = k.handles.get(fh).map(|h| (h.ino, h.file)) {
                    // A write moves the size and drops the attributes.
                    k.size_changed_here(ino);
                    k.dirtied(ino, file, seq);
                    k.emptied.remove(&file);
                    let (s, e) = (*offset as usize, *offset as usize + data.len());
                    let i_size = k.i_size.entry(ino).or_default();
                    *i_size = (*i_size).max(e as u64);
                    // An append overwrites nothing, wherever it was sent.
                    if !append {
                        k.issued.entry(file).or_default().push((seq, s, e));
                    }
                }
                Ctx::Write {
                    fh: *fh,
                    rec: WriteRec {
                        seq,
                        fh: *fh,
                        offset: *offset,
                        data: data.to_vec(),
                        after: commits,
                        append,
                        cut,
                        keeps_base,
                    },
                }
            }
            Op::Flush { fh, .. } | Op::Fsync { fh } | Op::Release { fh } => {
                match k.handles.get(fh).map(|h| h.ino) {
                    Some(ino) => {
                        // A close vouches for what was written through its
                        // handle, and through the file's other handles since
                        // it was opened (like errseq: an older failure is
                        // reported to the handles that saw it happen).
                        let opened = k.handles.get(fh).map_or(0, |h| h.opened);
                        let mut writes = Vec::new();
                        let mut file = None;
                        for (f, h) in k.handles.iter_mut().filter(|(_, h)| h.ino == ino) {
                            if f == fh {
                                writes.append(&mut h.writes);
                            } else {
                                let (late, early) =
                                    h.writes.drain(..).partition(|w| w.seq > opened);
                                h.writes = early;
                                writes.extend::<Vec<WriteRec>>(late);
                            }
                            file = file.or(h.file);
                        }
                        writes.sort_by_key(|w| w.seq);
                        // (The truncation stays pending until a flush that
                        // is not bare is answered: a FLUSH sent while an
                        // `fsync` still waits for the file's lock is bare
                        // to the client too.)
                        let bare = matches!(op, Op::Flush { .. }) && k.emptied.contains_key(&file);
                        if matches!(op, Op::Release { .. }) {
                            k.handles.remove(fh);
                            if let Some(n) = k.open.get_mut(&ino) {
                                *n = n.saturating_sub(1);
                            }
                        }
                        Ctx::Flush {
                            ino,
                            file,
                            writes,
                            seq,
                            bare,
                        }
                    }
                    None => Ctx::Plain,
                }
            }
            Op::SetAttr {
                ino,
                set: SetAttr {
                    size: Some(size), ..
                },
            } => {
                // It may join the transaction a flush is committing: what
                // lies beyond `size` need not survive.
                let cut = usize::try_from(*size).unwrap_or(usize::MAX);
                k.size_changed_here(*ino);
                k.i_size.insert(*ino, *size);
                let file = k.identity.get(ino).copied();
                k.dirtied(*ino, file, seq);
                k.issued
                    .entry(file)
                    .or_default()
                    .push((seq, cut, usize::MAX));
                // A size change may cut what was written before it: those
                // writes are no longer checked byte for byte.
                for h in k.handles.values_mut().filter(|h| h.ino == *ino) {
                    h.writes.clear();
                }
                Ctx::Truncate {
                    ino: *ino,
                    file,
                    seq,
                    grows: cut != 0,
                }
            }
            Op::Read { fh, .. } => {
                let checkable = k.handles.get(fh).is_some_and(|h| k.clean(h.ino));
                Ctx::Read { fh: *fh, checkable }
            }
            Op::Create { .. } => Ctx::Create {
                acked: self.files.acked.clone(),
                append: std::mem::take(&mut self.create_appends),
            },
            Op::SetLock { fh, kind: None, .. } => match k.handles.get(fh) {
                Some(h) => Ctx::Unlock {
                    ino: h.ino,
                    file: h.file,
                    seq,
                },
                None => Ctx::Plain,
            },
            _ => Ctx::Plain,
        };
        self.stats.ops += 1;
        self.note(|| format!("c{c} → {}", op_summary(&op)));
        let req = self.w.op(c, op.clone());
        let invalidations = self.w.clients[c].invalidated.len();
        let size_changes = self.kernels[c].size_changes;
        let pending = Pending {
            req,
            op,
            ctx,
            invalidations,
            size_changes,
        };
        if self.pending.insert((c, req), pending).is_some() {
            return Err(self.violation(format!("request {req:?} of client {c} issued twice")));
        }
        self.check()?;
        Ok(req)
    }

    /// The kernel of client `c` forgets every lookup of `ino`.
    pub fn forget(&mut self, c: usize, ino: Ino) {
        let n = self.kernels[c].nlookup.remove(&ino).unwrap_or(0);
        // The inode goes, and its number may come back for another file.
        self.kernels[c].sizes.remove(&ino);
        self.kernels[c].i_size.remove(&ino);
        if n > 0 {
            self.note(|| format!("c{c} forget {ino:?} ×{n}"));
            self.w.clients[c].core.forget(ino, n);
        }
    }

    /// Lets `d` of simulated time pass, checking after every event.
    pub fn advance(&mut self, d: Duration) -> Result<(), Violation> {
        let end = self.w.now + d;
        while self.w.step(end) {
            self.check()?;
        }
        self.w.run_for(end.saturating_duration_since(self.w.now));
        self.check()
    }

    /// Cuts client `c` off (`long`: for longer than the lock ttl).
    pub fn partition(&mut self, c: usize, long: bool) -> Result<(), Violation> {
        if long {
            self.stats.long_partitions += 1;
        } else {
            self.stats.short_partitions += 1;
        }
        self.note(|| format!("partition c{c} ({})", if long { "long" } else { "short" }));
        self.locks.fault();
        self.w.partition(c);
        self.check()
    }

    /// Cuts client `c` off without its connection noticing: messages are
    /// lost both ways (`long`: for longer than the lock ttl).
    pub fn silence(&mut self, c: usize, long: bool) -> Result<(), Violation> {
        self.stats.silent_partitions += 1;
        self.note(|| format!("silence c{c} ({})", if long { "long" } else { "short" }));
        self.locks.fault();
        self.w.silence(c);
        self.check()
    }

    /// Ends every partition; clients that gave up connect again.
    pub fn heal(&mut self) -> Result<(), Violation> {
        self.note(|| "heal".to_string());
        self.w.heal();
        self.reconnect_all();
        self.check()
    }

    fn reconnect_all(&mut self) {
        let now = self.w.now;
        for c in 0..self.kernels.len() {
            if !self.w.clients[c].core.is_ready() {
                self.w.clients[c].core.connect(now);
            }
        }
        self.w.pump();
    }

    /// The host crashes; its disk keeps what was durable. Every file's
    /// content must be its last commit.
    pub fn crash_host(&mut self) -> Result<(), Violation> {
        self.stats.host_crashes += 1;
        self.note(|| "host crash".to_string());
        self.check()?;
        self.locks.host_crashed();
        self.xattrs.fault(self.seq);
        self.w.crash_host();
        // Staging dies with the host; the next run numbers its own.
        self.replays.clear();
        // The clients' leases die with its sessions: what they answered
        // and had not sent is refused, each reported at its handles.
        self.deferred.clear();
        self.check()?;
        self.check_disk()?;
        // A holder's last commit may be gone with the group commit's
        // window: only commits from here on show what it wrote.
        self.locks.since = self.files.commits.len();
        Ok(())
    }

    /// The files at `paths` on the disk now, as far as the model knows
    /// them.
    fn files_at(&mut self, paths: &[RelPath]) -> Vec<usize> {
        paths
            .iter()
            .filter_map(
                |p| match self.w.disk.execute(FsOp::Stat { path: p.clone() }) {
                    Ok(FsOk::Attr(a)) => self.files.by_key.get(&a.key).copied(),
                    _ => None,
                },
            )
            .collect()
    }

    /// The host starts again.
    pub fn restart_host(&mut self) -> Result<(), Violation> {
        self.note(|| "host restart".to_string());
        self.xattrs.restarted(self.seq);
        self.w.restart_host();
        // The new host reserves node ids anew, so a file made under a
        // lease from now on may get the node id (and so the made-up key)
        // of one made before: those keys name nobody now (a new session
        // ends every lease, and files not applied are refused).
        let local: Vec<(FileKey, usize)> = self
            .files
            .by_key
            .iter()
            .filter(|(k, _)| k.dev == LOCAL_DEV)
            .map(|(k, f)| (*k, *f))
            .collect();
        for (key, file) in local {
            self.files.by_key.remove(&key);
            self.files.before_restart.insert(key, file);
        }
        self.check()
    }

    /// Whether the host process is running.
    pub fn host_up(&self) -> bool {
        self.w.host_up
    }

    /// A local program on the host changes its folder behind the clients'
    /// backs (the host's watcher reports it, if the host runs). What it
    /// makes is a version of its own: a new file for an atomic save, a
    /// new content of the same file for an append or a truncate.
    pub fn local(&mut self, change: Local) -> Result<(), Violation> {
        // Everything the disk did before belongs before this change.
        self.check()?;
        self.stats.local_changes += 1;
        self.note(|| format!("local: {change:?}"));
        let paths = match &change {
            Local::Replace(p, _)
            | Local::Append(p, _)
            | Local::Truncate(p, _)
            | Local::Delete(p) => {
                vec![p.clone()]
            }
            Local::Rename(from, to) | Local::Link(from, to) => vec![from.clone(), to.clone()],
        };
        let before = self.files_at(&paths);
        self.xattrs.touched(before);
        let disk = &mut self.w.disk;
        let (done, touched) = match &change {
            Local::Replace(p, data) => (disk.local_replace(p, data), vec![p.clone()]),
            Local::Append(p, data) => (disk.local_append(p, data), vec![p.clone()]),
            Local::Truncate(p, size) => (disk.local_truncate(p, *size), vec![p.clone()]),
            Local::Delete(p) => (disk.local_delete(p), vec![p.clone()]),
            Local::Rename(from, to) => {
                (disk.local_rename(from, to), vec![from.clone(), to.clone()])
            }
            Local::Link(from, to) => (disk.local_link(from, to), vec![from.clone(), to.clone()]),
        };
        if done.is_err() {
            return Ok(());
        }
        if let Local::Replace(p, _) | Local::Append(p, _) | Local::Truncate(p, _) = &change
            && let Ok(FsOk::Attr(a)) = self.w.disk.execute(FsOp::Stat { path: p.clone() })
        {
            let content = self.w.disk.read_file(p).unwrap_or_default().to_vec();
            match self.files.by_key.get(&a.key).copied() {
                Some(f) => {
                    self.local_seq.insert(f, self.seq);
                    let h = &mut self.files.history[f];
                    h.push(content);
                    let idx = h.len() - 1;
                    self.files.commits.push((f, idx, None));
                }
                None => {
                    self.files.register(a.key, a.kind, Some(content));
                }
            }
        }
        // (Once a saved file is registered.)
        let after = self.files_at(&paths);
        self.xattrs.touched(after);
        if self.w.host_up {
            for p in touched {
                self.w.local_change(p);
            }
            self.w.pump();
        }
        self.check()
    }

    /// The host's disk fills up: `room` more bytes of file data fit.
    pub fn fill_disk(&mut self, room: u64) -> Result<(), Violation> {
        self.stats.disk_full += 1;
        let cap = self.w.disk.used() + room;
        self.note(|| format!("disk full at {cap} bytes"));
        self.w.disk.set_capacity(Some(cap));
        self.check()
    }

    /// The host's disk has room again.
    pub fn free_disk(&mut self) -> Result<(), Violation> {
        self.note(|| "disk has room again".to_string());
        self.w.disk.set_capacity(None);
        self.check()
    }

    /// The host's disk fails its next `count` data writes with `errno`.
    pub fn fail_disk(&mut self, errno: Errno, count: u32) -> Result<(), Violation> {
        self.stats.disk_failures += 1;
        self.note(|| format!("disk fails the next {count} writes with {errno:?}"));
        self.w.disk.fail_next(errno, count);
        self.check()
    }

    /// A better path to the host appears for client `c`: it moves its
    /// session there (see [`wormhole_core::testkit::World::move_path`]).
    pub fn move_path(&mut self, c: usize) -> Result<(), Violation> {
        self.note(|| format!("c{c} moves to a new path"));
        self.locks.fault();
        self.w.move_path(c);
        self.check()
    }

    /// Client `c` crashes and is mounted again (a new kernel, a new
    /// client machine).
    pub fn crash_client(&mut self, c: usize) -> Result<(), Violation> {
        self.stats.client_crashes += 1;
        self.note(|| format!("c{c} crash"));
        // Its kernel's requests die with it.
        self.pending.retain(|(pc, _), _| *pc != c);
        // What it answered under a lease and had not sent is lost with it,
        // as a crashed machine's unwritten page cache.
        self.deferred.retain(|d| d.client != c);
        self.kernels[c] = Kernel::default();
        self.locks_crashed(c);
        self.w.crash_client(c);
        let now = self.w.now;
        self.w.clients[c].core.connect(now);
        self.w.pump();
        self.check()
    }

    // ------------------------------------------------------------- checks

    /// Every invariant, on what happened since the last call.
    pub fn check(&mut self) -> Result<(), Violation> {
        for d in std::mem::take(&mut self.w.attr_log) {
            self.delivered.insert((d.client, d.node, d.version), d.at);
        }
        self.stats.path_moves = self.w.path_moves;
        if self.w.sessions_lost_by_moves > 0 {
            return Err(self.violation(
                "a move to a new path lost the session while the host ran on".to_string(),
            ));
        }
        self.check_fs_log()?;
        self.check_deferred();
        self.check_locks()?;
        self.check_answers()
    }

    /// Fencing, file identities and commits from the disk's log.
    fn check_fs_log(&mut self) -> Result<(), Violation> {
        let log = std::mem::take(&mut self.w.fs_log);
        for r in log {
            self.check_fence(&r)?;
            self.learn_record(r)?;
        }
        Ok(())
    }

    fn check_fence(&mut self, r: &FsRecord) -> Result<(), Violation> {
        let staging = matches!(
            r.op,
            FsOp::StageBegin { .. }
                | FsOp::StageWrite { .. }
                | FsOp::StageCopy { .. }
                | FsOp::StageTruncate { .. }
                | FsOp::StageCommit { .. }
        );
        if !staging {
            return Ok(());
        }
        self.stats.fenced += 1;
        let Some((session, node, token)) = r.txn else {
            return Err(self.violation(format!(
                "{:?} of a transaction the host does not know",
                r.op
            )));
        };
        let Some(lock) = r.lock.filter(|l| l.token == token) else {
            return Err(
                self.violation(format!("{:?} with token {token:?}, which is no lock", r.op))
            );
        };
        let covers = match lock.scope {
            LockScope::File(n) | LockScope::Directory(n) => n == node,
            LockScope::Subtree(n) => n == node || r.ancestors.contains(&n),
        };
        if lock.session != session
            || lock.kind != LockKind::Exclusive
            || !covers
            || lock.expires_at <= r.issued_at
        {
            return Err(self.violation(format!(
                "{:?} fenced by a stale token: lock {lock:?}, txn of {session:?} on {node:?}",
                r.op
            )));
        }
        Ok(())
    }

    /// Invariant 8, every version is whole: a transaction is replayed from
    /// the staging operations the disk executed, starting from the
    /// content it was staged from. Its commit must be exactly that replay
    /// (no size the writer assumed from another version, no padding), and
    /// must replace exactly the content it was staged from (never a file a
    /// local program or another client put there since).
    fn replay(&mut self, r: &FsRecord) -> Result<(), Violation> {
        use wormhole_core::host::FsOp as F;
        match (&r.op, &r.result) {
            (F::StageBegin { txn, .. }, Ok(_)) => {
                if let Some((key, content)) = &r.staged_from {
                    let replay = Replay {
                        base_key: *key,
                        base: content.clone(),
                        staged: content.clone(),
                    };
                    self.replays.insert(*txn, replay);
                }
            }
            (F::StageWrite { txn, offset, data }, Ok(_)) => {
                if let Some(x) = self.replays.get_mut(txn) {
                    let (s, e) = (*offset as usize, *offset as usize + data.len());
                    if x.staged.len() < e {
                        x.staged.resize(e, 0);
                    }
                    x.staged[s..e].copy_from_slice(data);
                }
            }
            (F::StageTruncate { txn, size }, Ok(_)) => {
                if let Some(x) = self.replays.get_mut(txn) {
                    x.staged.resize(*size as usize, 0);
                }
            }
            (F::StageCommit { txn, size, set, .. }, Ok(result)) => {
                let Some(x) = self.replays.remove(txn) else {
                    return Err(self.violation(format!("{txn:?} committed but never staged")));
                };
                self.stats.commits_replayed += 1;
                if set.mode.is_some() || set.mtime.is_some() {
                    // Mode and times set while writing: the new content
                    // has them, whatever the last write did.
                    let FsOk::Attr(a) = result else {
                        return Err(self.violation(format!("{txn:?} committed without attributes")));
                    };
                    let mode_ok = set.mode.is_none_or(|m| a.mode == m & 0o7777);
                    let mtime_ok = match set.mtime {
                        Some(SetTime::At(t)) => a.mtime == t,
                        _ => true,
                    };
                    if !(mode_ok && mtime_ok) {
                        return Err(self.violation(format!(
                            "{txn:?} committed with {set:?} but the file has mode {:o}, mtime {:?}",
                            a.mode, a.mtime
                        )));
                    }
                    self.stats.sets_committed += 1;
                }
                if r.replaced != Some(x.base_key) || r.replaced_content.as_deref() != Some(&x.base)
                {
                    return Err(self.violation(format!(
                        "{txn:?} was staged from {:?} ({} bytes) but its commit replaced {:?} ({:?} bytes): another version was lost",
                        x.base_key,
                        x.base.len(),
                        r.replaced,
                        r.replaced_content.as_ref().map(Vec::len)
                    )));
                }
                let committed = r.committed.as_deref().unwrap_or_default();
                if committed.len() as u64 != *size || committed != x.staged {
                    return Err(self.violation(format!(
                        "{txn:?} committed {} bytes (size {size}) that are not its staged content ({} bytes): a version that never was",
                        committed.len(),
                        x.staged.len()
                    )));
                }
            }
            (F::StageBegin { txn, .. } | F::StageCommit { txn, .. } | F::StageAbort { txn }, _) => {
                self.replays.remove(txn);
            }
            _ => {}
        }
        Ok(())
    }

    fn learn_record(&mut self, r: FsRecord) -> Result<(), Violation> {
        self.replay(&r)?;
        let fresh_content = matches!(r.op, FsOp::Create { .. }).then(Vec::new);
        // The directories' attributes beside a result say nothing of files.
        let (result, _) = wormhole_core::host::split_dirs(r.result.clone());
        match (&r.op, &result) {
            (FsOp::StageCommit { .. }, Ok(FsOk::Attr(a))) => {
                if a.nlink > 1 {
                    self.stats.in_place_commits += 1;
                }
                let file = match r.replaced.and_then(|k| self.files.by_key.get(&k).copied()) {
                    Some(f) => f,
                    None => {
                        return Err(
                            self.violation(format!("commit {:?} replaced an unknown file", r.op))
                        );
                    }
                };
                self.files.by_key.insert(a.key, file);
                let content = r.committed.unwrap_or_default();
                let h = &mut self.files.history[file];
                h.push(content);
                let idx = h.len() - 1;
                self.files.commits.push((file, idx, r.writer));
                self.stats.commits += 1;
                self.note(|| format!("disk: commit #{idx} of file {file}"));
                if let Some(c) = r.writer {
                    // Invariant 10: a client commits a file only when its
                    // kernel asked (a flush, a close, a write or read that
                    // needs it, a size or attribute change): never at an
                    // open, whose O_TRUNC must wait for the rewrite.
                    let asked = self.asked.entry((c, file)).or_default();
                    if *asked == 0 {
                        return Err(self.violation(format!(
                            "client {c} committed file {file} (#{idx}) though its kernel asked for nothing that commits since its last commit"
                        )));
                    }
                    *asked -= 1;
                    self.commit_under_lock(c, file, idx)?;
                    for n in 0..self.losses.len() {
                        let loss = &self.losses[n];
                        if loss.client == c && loss.file == file {
                            let landed = self.check_loss(loss, file, idx)?;
                            for seq in landed {
                                self.losses[n].landed.insert(seq, idx);
                            }
                        }
                    }
                }
            }
            (FsOp::Batch { dir, ops }, Ok(FsOk::Batch(items))) => {
                let nodes = self.w.host.nodes();
                let parent = dir
                    .names()
                    .iter()
                    .try_fold(NodeId::ROOT, |at, n| nodes.child(at, n));
                for (op, made) in ops.iter().zip(items) {
                    let (BatchOp::Create(new), Ok(a)) = (op, made) else {
                        match (op, made) {
                            (BatchOp::Unlink { .. }, Ok(_)) => self.stats.unlinks_streamed += 1,
                            (BatchOp::Rmdir { .. }, Ok(_)) => self.stats.rmdirs_streamed += 1,
                            (BatchOp::SetAttr(set), Ok(a)) => {
                                // What the holder answered is what the
                                // directory has, once applied.
                                let mode_ok = set.mode.is_none_or(|m| a.mode == m & 0o7777);
                                let mtime_ok = match set.mtime {
                                    Some(SetTime::At(t)) => a.mtime == t,
                                    _ => true,
                                };
                                if a.kind != FileKind::Dir || !(mode_ok && mtime_ok) {
                                    return Err(self.violation(format!(
                                        "{dir:?} set to {set:?} in its stream but it is {:?} with mode {:o}, mtime {:?}",
                                        a.kind, a.mode, a.mtime
                                    )));
                                }
                                self.stats.dir_sets_streamed += 1;
                            }
                            _ => {}
                        }
                        continue;
                    };
                    // The file its client has handed out under the node
                    // id it gave it, if any.
                    // The host binds the node once the batch's result is
                    // in (a worker may report it late); until then the
                    // client that made it knows it.
                    let local = parent
                        .and_then(|p| {
                            self.w
                                .clients
                                .iter()
                                .find_map(|cl| cl.core.unapplied_node(p, &new.name))
                                .or_else(|| nodes.child(p, &new.name))
                        })
                        .map(|node| FileKey {
                            dev: LOCAL_DEV,
                            ino: node.0,
                        })
                        .and_then(|k| self.files.by_key.get(&k).copied());
                    let content = new.data.to_vec();
                    let (f, idx) = match local {
                        Some(f) => {
                            self.files.by_key.insert(a.key, f);
                            let h = &mut self.files.history[f];
                            h.push(content);
                            (f, h.len() - 1)
                        }
                        None => (self.files.register(a.key, a.kind, Some(content)), 0),
                    };
                    self.files.commits.push((f, idx, None));
                    self.stats.files_streamed += 1;
                }
            }
            (_, Ok(FsOk::Attr(a) | FsOk::Opened(a, _) | FsOk::Data(_, a))) => {
                self.files.register(a.key, a.kind, fresh_content);
            }
            (_, Ok(FsOk::Listing { entries, .. })) => {
                for (_, a) in entries {
                    self.files.register(a.key, a.kind, None);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn check_locks(&self) -> Result<(), Violation> {
        let table = self.w.host.locks();
        table
            .check_invariants()
            .map_err(|e| self.violation(format!("lock table: {e}")))?;
        let locks: Vec<_> = table.locks().collect();
        let nodes = self.w.host.nodes();
        for (i, a) in locks.iter().enumerate() {
            for b in &locks[i + 1..] {
                let exclusive = a.kind == LockKind::Exclusive || b.kind == LockKind::Exclusive;
                let (na, nb) = (scope_node(a.scope), scope_node(b.scope));
                let overlap = na == nb
                    || matches!(a.scope, LockScope::Subtree(n) if nodes.ancestors(nb).contains(&n))
                    || matches!(b.scope, LockScope::Subtree(n) if nodes.ancestors(na).contains(&n));
                if exclusive && overlap {
                    return Err(self.violation(format!("conflicting locks held: {a:?} and {b:?}")));
                }
            }
        }
        Ok(())
    }

    /// Takes every answer the clients produced and checks it.
    fn check_answers(&mut self) -> Result<(), Violation> {
        for c in 0..self.kernels.len() {
            let answers = std::mem::take(&mut self.w.clients[c].answers);
            let k = &mut self.kernels[c];
            for ino in &self.w.clients[c].invalidated[k.invalidations_applied..] {
                k.sizes.remove(ino);
            }
            k.invalidations_applied = self.w.clients[c].invalidated.len();
            for (req, result) in answers {
                self.kernels[c].answered += 1;
                let Some(p) = self.pending.remove(&(c, req)) else {
                    return Err(self.violation(format!(
                        "client {c} answered {req:?}, which is not pending: {result:?}"
                    )));
                };
                let offline = self.w.clients[c].offline_answers.remove(&req);
                self.note(|| {
                    let from = if offline { " (host unreachable)" } else { "" };
                    format!("c{c} ← {} = {}{from}", op_summary(&p.op), summary(&result))
                });
                if offline {
                    self.stats.offline_answers += 1;
                }
                match &result {
                    Ok(_) => self.stats.ok += 1,
                    Err(e) => *self.stats.errors.entry(format!("{e:?}")).or_default() += 1,
                }
                self.check_answer(c, p, result, offline)?;
            }
            let replies = self.w.clients[c].replies;
            if replies != self.kernels[c].answered {
                return Err(self.violation(format!(
                    "client {c} replied {replies} times to {} requests",
                    self.kernels[c].answered
                )));
            }
        }
        Ok(())
    }

    /// An answer hands out `ino` for the file with `key`: it must not be
    /// an inode the kernel still references for another file.
    fn hand_out(
        &mut self,
        c: usize,
        ino: Ino,
        key: FileKey,
        kind: FileKind,
        lookup: bool,
    ) -> Result<(), Violation> {
        if key.dev == LOCAL_DEV && !self.files.by_key.contains_key(&key) {
            let k = &self.kernels[c];
            let before = self.files.before_restart.get(&key).copied();
            match before.filter(|f| k.referenced(ino) && k.identity.get(&ino) == Some(f)) {
                // Made before the host restarted, by a client that has
                // not reconnected yet: the same file it answered for.
                Some(f) => {
                    self.files.before_restart.remove(&key);
                    self.files.by_key.insert(key, f);
                }
                // Made by this client under a lease: a new, empty file
                // until the host applies it (`learn_record` joins the
                // two).
                None => {
                    self.files.register(key, kind, Some(Vec::new()));
                }
            }
        }
        let Some(&file) = self.files.by_key.get(&key) else {
            return Err(self.violation(format!(
                "client {c} handed out {ino:?} for unknown file {key:?}"
            )));
        };
        let k = &mut self.kernels[c];
        if ino == Ino::ROOT {
            return Ok(());
        }
        if k.referenced(ino)
            && let Some(&old) = k.identity.get(&ino)
            && old != file
        {
            return Err(self.violation(format!(
                "client {c} reused {ino:?} (still referenced for file {old}) for file {file}"
            )));
        }
        k.identity.insert(ino, file);
        k.identity_at.insert(ino, self.seq);
        k.kinds.insert(ino, kind);
        if lookup {
            *k.nlookup.entry(ino).or_default() += 1;
        }
        Ok(())
    }

    /// Checks one answer; `offline`: given while the client found its host
    /// unreachable, from its cache.
    fn check_answer(
        &mut self,
        c: usize,
        p: Pending,
        result: Result<Answer, Errno>,
        offline: bool,
    ) -> Result<(), Violation> {
        let shape_ok = match (&p.op, &result) {
            (_, Err(_)) => true,
            (Op::Mkdir { .. }, Ok(Answer::Entry { attr, .. })) => {
                // Leased with its answer, not asked for after it.
                if self.w.clients[c].core.holds_lease(attr.node) {
                    self.stats.dirs_leased_with_mkdir += 1;
                }
                true
            }
            (Op::Lookup { .. } | Op::Symlink { .. }, Ok(Answer::Entry { .. })) => true,
            (Op::Link { ino, .. }, Ok(Answer::Entry { ino: linked, .. })) => {
                // The new name is the file's own inode.
                self.stats.links += 1;
                ino == linked
            }
            (Op::Create { .. }, Ok(Answer::Created { .. })) => true,
            (Op::GetAttr { .. } | Op::SetAttr { .. }, Ok(Answer::Attr { .. })) => true,
            (Op::ReadDir { .. }, Ok(Answer::Dir(_))) => true,
            (Op::Open { .. }, Ok(Answer::Opened { .. })) => true,
            (Op::Read { .. }, Ok(Answer::Data(_))) => true,
            (Op::Write { data, .. }, Ok(Answer::Written(n))) => *n as usize == data.len(),
            (
                Op::Flush { .. }
                | Op::Fsync { .. }
                | Op::Release { .. }
                | Op::Unlink { .. }
                | Op::Rmdir { .. }
                | Op::Rename { .. }
                | Op::SyncAll,
                Ok(Answer::Done),
            ) => true,
            (Op::Readlink { .. }, Ok(Answer::Link(_))) => true,
            (Op::SetLock { .. }, Ok(Answer::Done)) => true,
            (Op::GetLock { .. }, Ok(Answer::Lock(_))) => true,
            (Op::Statfs, Ok(Answer::StatFs(_))) => true,
            (Op::SetXattr { .. } | Op::RemoveXattr { .. }, Ok(Answer::Done)) => true,
            (Op::GetXattr { .. }, Ok(Answer::Xattr(_) | Answer::XattrSize(_))) => true,
            _ => false,
        };
        if !shape_ok {
            return Err(self.violation(format!("client {c}: {:?} answered {result:?}", p.op)));
        }
        if let Ok(answer) = &result {
            self.check_fresh(c, answer, offline)?;
            self.learn_size(c, &p, answer);
        }
        self.lock_answered(c, p.req, &p.op, &p.ctx, &result)?;
        if let Ctx::Xattr(x) = &p.ctx {
            self.xattr_answered(c, &p.op, x, &result)?;
        }
        match (p.ctx, result) {
            (Ctx::Unlock { ino, file, seq }, Ok(_)) => {
                // Its commit is over: what was written before it is on
                // the host (or lost, which a later close reports).
                self.kernels[c].cleaned(ino, file, seq);
            }
            (Ctx::Plain, Ok(Answer::Entry { ino, attr, .. })) => {
                self.hand_out(c, ino, attr.key, attr.kind, true)?;
            }
            (Ctx::Plain, Ok(Answer::Dir(items))) => {
                // `.` and `..` give the kernel nothing but a number to
                // show (no reference, no attributes it keeps).
                for i in items.iter().filter(|i| i.name.entry().is_some()) {
                    self.hand_out(c, i.ino, i.attr.key, i.attr.kind, false)?;
                }
            }
            (Ctx::Create { acked, append }, Ok(Answer::Created { ino, attr, fh, .. })) => {
                self.hand_out(c, ino, attr.key, attr.kind, true)?;
                let file = self.files.by_key.get(&attr.key).copied();
                let min_index = file.and_then(|f| acked.get(&f).copied()).unwrap_or(0);
                self.new_handle(c, fh, ino, file, min_index, self.seq)?;
                if append && let Some(h) = self.kernels[c].handles.get_mut(&fh) {
                    h.append = true;
                    self.stats.append_creates += 1;
                }
            }
            (Ctx::Open { file, min_index }, Ok(Answer::Opened { fh, .. })) => {
                let Op::Open { ino, mode, .. } = p.op else {
                    unreachable!("shape checked")
                };
                // Close-to-open needs the host: an open the cache answered
                // while it was unreachable may be at any committed version
                // (still a whole one: the reads check that).
                let min_index = if offline { 0 } else { min_index };
                if let Op::Open { truncate: true, .. } = p.op {
                    self.seq += 1;
                    let at = self.seq;
                    let k = &mut self.kernels[c];
                    k.dirtied(ino, file, at);
                    k.emptied.insert(file, at);
                    if let Some(f) = file {
                        k.truncated_at_open.insert(f, at);
                    }
                }
                self.new_handle(c, fh, ino, file, min_index, self.seq)?;
                if let Some(h) = self.kernels[c].handles.get_mut(&fh) {
                    h.append = mode == OpenFor::Append;
                    h.write = mode != OpenFor::Read;
                }
            }
            (Ctx::Write { fh, rec }, Ok(_)) => {
                if let Some(h) = self.kernels[c].handles.get_mut(&fh) {
                    h.writes.push(rec);
                }
            }
            (
                Ctx::Flush {
                    ino,
                    file,
                    writes,
                    seq,
                    bare,
                },
                result,
            ) => {
                let k = &mut self.kernels[c];
                if result.is_ok() && !bare {
                    // Everything written before it is on the host now (a
                    // failed flush may leave later writes buffered).
                    k.cleaned(ino, file, seq);
                    if k.emptied.get(&file).is_some_and(|&at| at < seq) {
                        k.emptied.remove(&file);
                    }
                }
                if result.is_err() {
                    // The error reports the loss of every write so far.
                    for h in k.handles.values_mut().filter(|h| h.ino == ino) {
                        h.writes.clear();
                    }
                    // Including a refused create answered under a lease.
                    self.deferred.retain(|d| d.client != c || d.file != file);
                    self.check_no_hole(c, file, &writes)?;
                } else if !writes.is_empty()
                    && !matches!(p.op, Op::Fsync { .. })
                    && self.w.clients[c].core.unapplied() > 0
                    && self.durable_in(c, file, &writes).is_err()
                {
                    // A lease holder's close, answered before its stream
                    // reached the host: checked once it has.
                    self.stats.acks_deferred += 1;
                    self.deferred.push(Deferred {
                        client: c,
                        file,
                        writes,
                    });
                } else if !writes.is_empty() {
                    let need = self.check_durable(c, file, &writes)?;
                    if let (Op::Fsync { .. }, Some(f)) = (&p.op, file) {
                        let d = self.files.durable.entry(f).or_default();
                        *d = (*d).max(need);
                    }
                }
            }
            (
                Ctx::Truncate {
                    ino,
                    file,
                    seq,
                    grows,
                },
                result,
            ) => {
                let k = &mut self.kernels[c];
                if result.is_ok() {
                    k.cleaned(ino, file, seq);
                    // Emptying an emptied file changes nothing; any other
                    // size makes the next FLUSH commit. (Known once it
                    // succeeded: a FLUSH sent meanwhile is then taken for
                    // a bare one, which only checks less.)
                    if grows && k.emptied.get(&file).is_some_and(|&at| at < seq) {
                        k.emptied.remove(&file);
                    }
                }
            }
            (Ctx::Read { fh, checkable }, Ok(Answer::Data(data))) => {
                let Op::Read { offset, size, .. } = p.op else {
                    return Ok(());
                };
                let data = self.within_kernel_size(c, fh, offset, data);
                let still_clean = self.kernels[c]
                    .handles
                    .get(&fh)
                    .is_some_and(|h| self.kernels[c].clean(h.ino));
                if !(checkable && still_clean) {
                    return Ok(());
                }
                if offset == 0 && (data.len() as u64) < u64::from(size) {
                    self.check_read(c, fh, &data, offline)?;
                } else if offset > 0 {
                    self.check_slice(c, fh, offset, size, &data, offline)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The kernel takes the size an answer brings for its inode.
    fn learn_size(&mut self, c: usize, p: &Pending, answer: &Answer) {
        let (ino, attr, ttl) = match (&p.op, answer) {
            (_, Answer::Entry { ino, attr, ttl, .. } | Answer::Created { ino, attr, ttl, .. }) => {
                (*ino, attr, *ttl)
            }
            (Op::GetAttr { ino } | Op::SetAttr { ino, .. }, Answer::Attr { attr, ttl }) => {
                (*ino, attr, *ttl)
            }
            _ => return,
        };
        let k = &mut self.kernels[c];
        let raced = self.w.clients[c].invalidated[p.invalidations..].contains(&ino)
            || k.size_changed
                .get(&ino)
                .is_some_and(|&at| at > p.size_changes);
        if raced || attr.kind != FileKind::File {
            k.sizes.remove(&ino);
        } else {
            k.sizes.insert(ino, (attr.size, self.w.now + ttl));
            k.i_size.insert(ino, attr.size);
        }
    }

    /// What a program gets of `data`, read at `offset` through `fh`: none
    /// of it past the size the kernel trusts for the handle's inode.
    fn within_kernel_size(
        &mut self,
        c: usize,
        fh: Fh,
        offset: u64,
        data: bytes::Bytes,
    ) -> bytes::Bytes {
        let k = &self.kernels[c];
        let Some(&(size, until)) = k.handles.get(&fh).and_then(|h| k.sizes.get(&h.ino)) else {
            return data;
        };
        if self.w.now >= until {
            return data;
        }
        let end = usize::try_from(size.saturating_sub(offset)).unwrap_or(usize::MAX);
        if end < data.len() {
            self.stats.reads_cut_by_kernel_size += 1;
            return data.slice(..end);
        }
        data
    }

    /// Invariant 7, no cached entry is served past its ttl: every
    /// attribute a kernel is given came from the host to this client
    /// within the ttl (a revalidation that brought the same version again
    /// counts). While the host is unreachable (`offline`), the cache
    /// answers past the ttl, but only with what the host sent: the
    /// attributes must have come to this client, at any time.
    fn check_fresh(&mut self, c: usize, answer: &Answer, offline: bool) -> Result<(), Violation> {
        let attrs: Vec<&Attr> = match answer {
            Answer::Entry { attr, .. }
            | Answer::Attr { attr, .. }
            | Answer::Created { attr, .. } => {
                vec![attr]
            }
            Answer::Dir(items) => items
                .iter()
                .filter(|i| i.name.entry().is_some())
                .map(|i| &i.attr)
                .collect(),
            _ => Vec::new(),
        };
        // An unlinked file open here (nlink 0) is answered from its
        // handle: with no name, no other client's commit can change it.
        // A file made under a lease and not applied yet is this client's
        // alone: nobody else can see it, let alone change it. So are the
        // attributes a holder answers for a leased directory whose mode
        // or times it set (made here from what it last knew, which the
        // lease keeps others from changing: their setattr waits for it).
        let own = |a: &Attr| self.w.clients[c].core.is_unapplied(a.node);
        let attrs: Vec<&Attr> = attrs.into_iter().filter(|a| !own(a)).collect();
        for a in attrs.into_iter().filter(|a| a.nlink > 0) {
            self.stats.attrs_checked += 1;
            let age = self
                .delivered
                .get(&(c, a.node, a.version))
                .map(|&at| self.w.now.saturating_duration_since(at));
            let stale = age.is_none_or(|age| age > self.attr_ttl);
            if stale && !(offline && age.is_some()) {
                return Err(self.violation(format!(
                    "client {c} served attributes of {:?} (version {:016x}, nlink {}) received {age:?} ago; the ttl is {:?}",
                    a.node, a.version, a.nlink, self.attr_ttl
                )));
            }
        }
        Ok(())
    }

    fn new_handle(
        &mut self,
        c: usize,
        fh: Fh,
        ino: Ino,
        file: Option<usize>,
        min_index: usize,
        opened: u64,
    ) -> Result<(), Violation> {
        let k = &mut self.kernels[c];
        if k.handles.contains_key(&fh) {
            return Err(self.violation(format!("client {c} handed out {fh:?} twice")));
        }
        *k.open.entry(ino).or_default() += 1;
        k.handles.insert(
            fh,
            HandleModel {
                ino,
                file,
                min_index,
                locked_min: 0,
                writes: Vec::new(),
                opened,
                append: false,
                write: true,
            },
        );
        Ok(())
    }

    /// An acknowledged flush: each write is in a commit of that file that
    /// the disk executed after the write was sent. Gives the latest commit
    /// that holds one of them.
    fn check_durable(
        &mut self,
        c: usize,
        file: Option<usize>,
        writes: &[WriteRec],
    ) -> Result<usize, Violation> {
        self.stats.acks_checked += 1;
        match self.durable_in(c, file, writes) {
            Ok(need) => Ok(need),
            Err(w) => Err(self.violation(format!(
                "client {c}: flush acknowledged, but a write of {} bytes at {} (file {file:?}) is in no commit of that file{}",
                w.data.len(),
                w.offset,
                if w.append {
                    " (as an append: whole, past the end of the version its commit replaced, which that commit keeps)"
                } else {
                    ""
                }
            ))),
        }
    }

    /// The latest commit holding one of `writes`, each of which must be in
    /// a commit (else the first write that is not), and the file's acked
    /// index raised to it.
    fn durable_in(
        &mut self,
        c: usize,
        file: Option<usize>,
        writes: &[WriteRec],
    ) -> Result<usize, WriteRec> {
        let mut need = 0;
        // A later write (or truncate) sent to the file overwrites an
        // earlier one, whichever handle and flush it went through, and may
        // have joined the same transaction: only what survives of each
        // write must be in a commit.
        let issued = self.kernels[c]
            .issued
            .get(&file)
            .cloned()
            .unwrap_or_default();
        for w in writes.iter().rev() {
            let (start, end) = (w.offset as usize, w.offset as usize + w.data.len());
            let later: Vec<(usize, usize)> = issued
                .iter()
                .filter(|&&(seq, _, _)| seq > w.seq)
                .map(|&(_, s, e)| (s, e))
                .collect();
            if w.append {
                if !later.is_empty() {
                    // A write or truncate sent after it may have replaced
                    // some of it, at a place the kernel's offsets do not
                    // tell: not checked byte for byte.
                    continue;
                }
                match self.appended_in(c, file, w) {
                    Some(i) => need = need.max(i),
                    None => return Err(w.clone()),
                }
                continue;
            }
            let parts = uncovered(start, end, &later);
            if parts.is_empty() {
                continue;
            }
            let found = self.files.commits[w.after.min(self.files.commits.len())..]
                .iter()
                .map(|&(f, i, _)| (f, i))
                .find(|&(f, i)| {
                    file.is_none_or(|want| want == f) && {
                        let content = &self.files.history[f][i];
                        parts.iter().all(|&(s, e)| {
                            content.len() >= e && content[s..e] == w.data[s - start..e - start]
                        })
                    }
                });
            match found {
                Some((_, i)) => need = need.max(i),
                None => return Err(w.clone()),
            }
        }
        if let Some(f) = file {
            let a = self.files.acked.entry(f).or_default();
            *a = (*a).max(need);
        }
        Ok(need)
    }

    /// The commit of `file` holding append `w` of client `c` past the end
    /// of the version that commit replaced (and keeping that version
    /// whole below it, where this kernel sent nothing else since its last
    /// flush): an append lands whole at the end, never over anything
    /// (another client's append above all), wherever its kernel sent it.
    fn appended_in(&mut self, c: usize, file: Option<usize>, w: &WriteRec) -> Option<usize> {
        let commits = self.files.commits.get(w.after..).unwrap_or_default();
        let (at, f, i) = commits.iter().enumerate().find_map(|(at, &(f, i, _))| {
            if file.is_some_and(|want| want != f) {
                return None;
            }
            let history = &self.files.history[f];
            let before = i.checked_sub(1).map(|p| &history[p][..]);
            if w.keeps_base && before.is_some_and(|b| !history[i].starts_with(b)) {
                return None;
            }
            let replaced = before.map_or(0, <[u8]>::len);
            let content = history[i].get(replaced.min(w.cut.unwrap_or(usize::MAX))..)?;
            content
                .windows(w.data.len().max(1))
                .any(|x| x == &w.data[..])
                .then_some((at, f, i))
        })?;
        // Did another writer commit the file between this append and the
        // commit that holds it?
        let after_another = commits[..at]
            .iter()
            .any(|&(cf, ci, writer)| cf == f && ci + 1 == i && writer != Some(c));
        if after_another {
            self.stats.appends_after_another += 1;
        }
        Some(i)
    }

    /// Acknowledged closes a lease holder answered before the host had
    /// their files: checked again now; those the host has applied are
    /// done.
    fn check_deferred(&mut self) {
        for c in 0..self.kernels.len() {
            let lost = self.w.clients[c]
                .events
                .iter()
                .filter(|e| matches!(e, ClientEvent::CreateLost { .. }))
                .count();
            if lost > 0 {
                // Reported: the client said the file is not there.
                self.stats.creates_lost += lost as u64;
                self.w.clients[c]
                    .events
                    .retain(|e| !matches!(e, ClientEvent::CreateLost { .. }));
                self.deferred.retain(|d| d.client != c);
            }
        }
        for d in std::mem::take(&mut self.deferred) {
            if self.durable_in(d.client, d.file, &d.writes).is_err() {
                self.deferred.push(d);
            }
        }
    }

    /// Invariant 9, a loss leaves no hole: the writes a failed flush
    /// reports as lost were made, in order, to one file by one writer, so
    /// no commit of that writer may hold a later one of them without an
    /// earlier one made through the same handle (a transaction that lost
    /// writes, and a later one that committed over the hole: a file that
    /// looks whole, mostly zeros). A handle opened after the loss starts
    /// afresh on the intact file: its writes may commit without those.
    fn check_no_hole(
        &mut self,
        c: usize,
        file: Option<usize>,
        writes: &[WriteRec],
    ) -> Result<(), Violation> {
        let (Some(file), Some(first)) = (file, writes.iter().map(|w| w.after).min()) else {
            return Ok(());
        };
        self.stats.losses_checked += 1;
        let mut loss = Loss {
            client: c,
            file,
            local: self.local_seq.get(&file).copied().unwrap_or(0),
            writes: writes.to_vec(),
            landed: BTreeMap::new(),
        };
        // The commits already made, and (see `learn_record`) every later
        // one of this writer and file.
        let past: Vec<usize> = self
            .files
            .commits
            .get(first..)
            .unwrap_or_default()
            .iter()
            .filter(|&&(f, _, writer)| f == file && writer == Some(c))
            .map(|&(_, i, _)| i)
            .collect();
        for i in past {
            let landed = self.check_loss(&loss, file, i)?;
            for seq in landed {
                loss.landed.insert(seq, i);
            }
        }
        self.losses.push(loss);
        Ok(())
    }

    /// Whether commit `i` of `file` holds a later write of `loss` without
    /// an earlier one made through the same handle. Only what no later
    /// write or truncate of the writer replaced must be there; what a
    /// local program changed since may be gone for good, and so may a
    /// write an earlier commit of the writer was seen to hold if another
    /// writer's commit came between (it may have replaced the write).
    /// Returns the writes it holds.
    fn check_loss(&self, loss: &Loss, file: usize, i: usize) -> Result<Vec<u64>, Violation> {
        if self.local_seq.get(&file).is_some_and(|&l| l > loss.local) {
            return Ok(Vec::new());
        }
        let issued = self.kernels[loss.client]
            .issued
            .get(&Some(file))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let content = &self.files.history[file][i];
        let mut missing: BTreeMap<Fh, &WriteRec> = BTreeMap::new();
        let mut held = Vec::new();
        let replaced_since = |landed: usize| {
            self.files.commits.iter().any(|&(f, k, writer)| {
                f == file && landed < k && k < i && writer != Some(loss.client)
            })
        };
        for w in &loss.writes {
            // (An append's place is not its kernel's offset.)
            if w.seq < loss.local || w.append {
                continue;
            }
            let (start, end) = (w.offset as usize, w.offset as usize + w.data.len());
            let later: Vec<(usize, usize)> = issued
                .iter()
                .filter(|&&(seq, _, _)| seq > w.seq)
                .map(|&(_, s, e)| (s, e))
                .collect();
            let parts = uncovered(start, end, &later);
            if parts.is_empty() {
                continue;
            }
            let holds = parts
                .iter()
                .all(|&(s, e)| content.len() >= e && content[s..e] == w.data[s - start..e - start]);
            if holds {
                if let Some(e) = missing.get(&w.fh) {
                    return Err(self.violation(format!(
                        "client {}: commit #{i} of file {file} holds the write at {} (seq {}) but not the earlier one at {} (seq {}) through {:?}, lost with it: a hole",
                        loss.client, w.offset, w.seq, e.offset, e.seq, w.fh
                    )));
                }
                held.push(w.seq);
            } else if !loss
                .landed
                .get(&w.seq)
                .is_some_and(|&at| replaced_since(at))
            {
                missing.entry(w.fh).or_insert(w);
            }
        }
        Ok(held)
    }

    /// A whole-file read through a clean handle: exactly one committed
    /// content of its file, no older than what was acknowledged before
    /// it was opened.
    fn check_read(
        &mut self,
        c: usize,
        fh: Fh,
        data: &[u8],
        offline: bool,
    ) -> Result<(), Violation> {
        let Some(h) = self.kernels[c].handles.get(&fh) else {
            return Ok(());
        };
        let min_index = if offline {
            h.min_index
        } else {
            h.min_index.max(h.locked_min)
        };
        let Some(file) = h.file else { return Ok(()) };
        let history = &self.files.history[file];
        if history.is_empty() {
            return Ok(());
        }
        self.stats.reads_checked += 1;
        if min_index > 0 {
            self.stats.reads_after_ack += 1;
        }
        if !history[min_index.min(history.len())..]
            .iter()
            .any(|v| v[..] == data[..])
        {
            let older = history.iter().position(|v| v[..] == data[..]);
            let elsewhere: Vec<(usize, usize)> = self
                .files
                .history
                .iter()
                .enumerate()
                .flat_map(|(f, h)| {
                    h.iter()
                        .enumerate()
                        .filter(|(_, v)| v[..] == data[..])
                        .map(move |(i, _)| (f, i))
                })
                .collect();
            return Err(self.violation(format!(
                "client {c}: read of file {file} through {fh:?} gave {} bytes ({:016x}) that are not commit ≥ #{} of it (matches #{older:?}; {} commits)",
                data.len(),
                crate::seeds::hash(data),
                min_index,
                history.len()
            ) + &format!("; it is (file, commit) {elsewhere:?}; first difference from the last commit at {:?}", history.last().and_then(|l| l.iter().zip(data.iter()).position(|(a, b)| a != b).map(|i| (i, l.len())))) ));
        }
        Ok(())
    }

    /// A read at `offset` gave `data`: it must be that range of one
    /// commit the handle may see (never bytes of two versions, never
    /// another file's), short only at that commit's end.
    fn check_slice(
        &mut self,
        c: usize,
        fh: Fh,
        offset: u64,
        size: u32,
        data: &[u8],
        offline: bool,
    ) -> Result<(), Violation> {
        let Some(h) = self.kernels[c].handles.get(&fh) else {
            return Ok(());
        };
        let min_index = if offline {
            h.min_index
        } else {
            h.min_index.max(h.locked_min)
        };
        let Some(file) = h.file else { return Ok(()) };
        let history = &self.files.history[file];
        if history.is_empty() {
            return Ok(());
        }
        self.stats.slices_checked += 1;
        let fits = |v: &Vec<u8>| {
            let from = usize::try_from(offset).unwrap_or(usize::MAX).min(v.len());
            let to = from.saturating_add(size as usize).min(v.len());
            v[from..to] == data[..]
        };
        if !history[min_index.min(history.len())..].iter().any(fits) {
            let older = history.iter().position(fits);
            return Err(self.violation(format!(
                "client {c}: read of file {file} through {fh:?} at {offset} (+{size}) gave {} bytes ({:016x}) that are not that range of commit ≥ #{} of it (matches #{older:?}; {} commits)",
                data.len(),
                crate::seeds::hash(data),
                min_index,
                history.len()
            )));
        }
        Ok(())
    }

    /// After a crash: every file on the disk holds one whole commit of
    /// it, no older than the one its last acknowledged fsync covered
    /// (docs/filesystem.md, "Durability"). A file the crash took back to
    /// an older commit has that content again as its newest: to the
    /// clients it is changed behind their backs, as by a local program.
    fn check_disk(&mut self) -> Result<(), Violation> {
        let mut found = Vec::new();
        walk(&mut self.w.disk, &RelPath::root(), &mut found);
        for (path, a) in found {
            if a.kind != FileKind::File {
                continue;
            }
            let Some(&file) = self.files.by_key.get(&a.key) else {
                return Err(self.violation(format!("{path:?} on disk is no file the log made")));
            };
            let content = self.w.disk.read_file(&path).unwrap_or_default().to_vec();
            let history = &self.files.history[file];
            if history.is_empty() {
                continue;
            }
            let floor = self.files.durable.get(&file).copied().unwrap_or(0);
            if self.files.durable.contains_key(&file) {
                self.stats.fsyncs_kept += 1;
            }
            match history.iter().rposition(|v| v[..] == content[..]) {
                Some(i) if i >= floor => {
                    if i + 1 < history.len() {
                        self.stats.rolled_back += 1;
                        self.local_seq.insert(file, self.seq);
                        let h = &mut self.files.history[file];
                        h.push(content);
                        let idx = h.len() - 1;
                        self.files.commits.push((file, idx, None));
                    }
                }
                Some(i) => {
                    return Err(self.violation(format!(
                        "after the crash {path:?} (file {file}) is back at commit #{i}, older than #{floor}, which an fsync was acknowledged for"
                    )));
                }
                None => {
                    return Err(self.violation(format!(
                        "after the crash {path:?} (file {file}) holds no whole commit of it"
                    )));
                }
            }
        }
        Ok(())
    }

    // ----------------------------------------------------------- liveness

    /// The liveness phase: heal, restart, reconnect, close and forget
    /// everything, let time run; then everything must have ended.
    pub fn converge(&mut self) -> Result<(), Violation> {
        self.note(|| "liveness phase".to_string());
        if self.locks.host_program {
            // The program on the host ends: clients' waits may go on.
            self.host_program_step()?;
        }
        self.w.heal();
        self.w.disk.set_capacity(None);
        self.w.disk.fail_next(Errno::Io, 0);
        if !self.w.host_up {
            self.restart_host()?;
        }
        self.reconnect_all();
        self.advance(Duration::from_secs(40))?;
        self.reconnect_all();
        self.advance(Duration::from_secs(40))?;
        for c in 0..self.kernels.len() {
            for fh in self.kernels[c].handles.keys().copied().collect::<Vec<_>>() {
                self.op(c, Op::Release { fh })?;
            }
            let inos: Vec<Ino> = self.kernels[c].nlookup.keys().copied().collect();
            for ino in inos {
                self.forget(c, ino);
            }
        }
        // Lock ttl, transaction idle timeout and session grace all fit.
        for _ in 0..60 {
            self.advance(Duration::from_secs(5))?;
            if self.settled() {
                break;
            }
        }
        self.advance(Duration::from_secs(5))?;
        if let Some(((c, req), p)) = self.pending.iter().next() {
            return Err(self.violation(format!(
                "liveness: client {c}'s {req:?} ({}) never answered ({} pending; record locks at the host: {:?})",
                op_summary(&p.op),
                self.pending.len(),
                self.w.host.record_locks()
            )));
        }
        if self.w.host.open_txns() != 0 {
            return Err(self.violation(format!(
                "liveness: {} write transactions never ended",
                self.w.host.open_txns()
            )));
        }
        if !self.w.host.locks().is_empty() {
            let writers: Vec<(usize, usize, usize)> = (0..self.kernels.len())
                .map(|c| {
                    (
                        c,
                        self.w.clients[c].core.open_writes(),
                        self.w.clients[c].core.in_flight(),
                    )
                })
                .collect();
            return Err(self.violation(format!(
                "liveness: {} locks never released (clients' open writes, requests in flight: {writers:?}): {:?}",
                self.w.host.locks().len(),
                self.w.host.locks().locks().collect::<Vec<_>>()
            )));
        }
        for c in 0..self.kernels.len() {
            if !self.w.clients[c].core.is_ready() {
                return Err(self.violation(format!("liveness: client {c} is not Ready")));
            }
            if self.w.clients[c].core.open_writes() != 0 && self.w.clients[c].core.in_flight() != 0
            {
                return Err(
                    self.violation(format!("liveness: client {c} still has writes in flight"))
                );
            }
        }
        for c in 0..self.kernels.len() {
            let sets = self.w.clients[c].core.sets_unapplied();
            if sets != 0 {
                return Err(self.violation(format!(
                    "liveness: client {c}'s {sets} directory mode or times changes never applied nor reported"
                )));
            }
        }
        if let Some(d) = self.deferred.first() {
            return Err(self.violation(format!(
                "liveness: client {}'s acknowledged close of file {:?} never reached the host ({} writes)",
                d.client,
                d.file,
                d.writes.len()
            )));
        }
        if self.w.disk.staged() != 0 {
            return Err(self.violation(format!(
                "liveness: {} staging files left",
                self.w.disk.staged()
            )));
        }
        self.check_disk()?;
        self.stats.converged += 1;
        Ok(())
    }

    fn settled(&self) -> bool {
        self.pending.is_empty()
            && self.w.host.open_txns() == 0
            && self.w.host.locks().is_empty()
            && self.w.clients.iter().all(|c| c.core.is_ready())
    }
}
