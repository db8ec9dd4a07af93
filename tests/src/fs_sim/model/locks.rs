//! Advisory locks in the simulation: every client now and then takes a
//! step of a *locked update* of one file, `LOCKED`, that no other action
//! touches: open it, lock it exclusively (waiting), read it whole, write
//! it, unlock, and sometimes close. One step per action, so clients
//! contend, wait and hand the lock over while messages are delayed and
//! reordered, clients are cut off, and hosts and clients crash.
//!
//! Three invariants, from the kernels' side:
//!
//! 11. **Mutual exclusion**: when a client is granted the lock, no other
//!     client's kernel holds it (from its grant until it asks to unlock or
//!     closes). A session that ends loses its locks, as documented, so a
//!     lock held across a fault (a partition, a crash, a host restart, a
//!     path move) is void from then on: only locks granted since count.
//! 12. **Data follows the locks**: a read under the lock returns what the
//!     last holder wrote (committed by its unlock), or something newer,
//!     even through a handle opened before that holder wrote.
//! 14. **Fencing**: no client's commit of the file reaches the disk
//!     while another client holds the lock by a grant since the last
//!     fault: writes made under a lock that was lost are refused.
//!
//! 15. **No EINTR without a signal**: a lock wait ends with EINTR only
//!     if a signal reached its program while it waited.
//!
//! Another thread of a client's program now and then unlocks bytes of
//! the file while the first waits for the lock (the same lock owner, as
//! threads of one process are). If the host has not granted the wait
//! yet, that lets go of nothing the waiter is granted later, as on a
//! local disk, and invariants 11, 12 and 14 hold for its grant. If it
//! has (the answer is on its way), the unlock may let go of the grant,
//! as on a local disk when the kernel grants a lock just before another
//! thread's unlock: the program's own race, so its grant counts for
//! nothing.
//!
//! A program on the host takes and lets go of the same lock now and then
//! (`fcntl` on the host's file, [`Sim::host_program_step`]): invariant 11
//! holds it too. No client is granted the lock while it holds it, and it
//! gets the lock only while no client holds it by a grant since the last
//! fault.

use super::{Ctx, Sim, Violation};
use wormhole_core::client::{Answer, Fh, Op, Req};
use wormhole_core::proto::{ByteRange, Errno, FileKind, LockKind, Name, OpenFor};
use wormhole_core::vfs::Ino;

/// The file locked updates share.
pub(crate) const LOCKED: &str = "L";

/// Each client's lock owner for its locked updates.
const OWNER: u64 = 0x10c0;

/// Where a client's locked update stands; each step waits for the answer
/// to the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(super) enum Step {
    /// Nothing open.
    #[default]
    Idle,
    /// Looking the file up, or opening it.
    Opening,
    /// Open, not locked.
    Open(Fh),
    /// Waiting for the lock.
    Locking(Fh),
    /// Holding it, not read yet.
    Locked(Fh),
    /// Read under the lock: next, write.
    Read(Fh),
    /// Written under the lock: next, unlock.
    Written(Fh),
    /// The unlock is on its way.
    Unlocking(Fh),
}

/// The kernels' side of the locked updates.
#[derive(Clone, Debug, Default)]
pub(super) struct LockModel {
    /// The file, once the sim knows its identity.
    pub(super) file: Option<usize>,
    /// Per client.
    pub(super) steps: Vec<Step>,
    /// Clients whose kernel holds the lock, and whether that lock still
    /// counts (false: held across a fault).
    pub(super) holders: std::collections::BTreeMap<usize, bool>,
    /// Where in the disk's commits the last host crash left off: a crash
    /// may roll the file back to an older commit.
    pub(super) since: usize,
    /// A request of the current step is out.
    pub(super) waiting: Vec<bool>,
    /// The kernel request of a lock wait, while it is out.
    pub(super) asked: Vec<Option<wormhole_core::client::Req>>,
    /// A program on the host holds the lock on the host's file.
    pub(super) host_program: bool,
    /// Per client, whether a signal reached the program during its
    /// current wait.
    pub(super) signaled: Vec<bool>,
    /// Unlocks another thread of a client's program made while the first
    /// waited, not answered yet.
    pub(super) other_thread: std::collections::BTreeSet<(usize, Req)>,
    /// Clients whose wait the host had granted when another thread of
    /// their program unlocked, and then whose hold of that grant: it may
    /// be let go, and counts for nothing.
    pub(super) raced: std::collections::BTreeSet<usize>,
    /// Such a grant was passed on in this run: its holder may have
    /// written the file while the program on the host held the lock.
    pub(super) raced_ever: bool,
    /// Clients that let go of such a grant (an unlock or a close): what
    /// they wrote under it commits behind that unlock (an unlock waits
    /// for the file's commit), so after their kernel asked. It counts for
    /// nothing in invariant 14 either, until the unlock is answered, they
    /// are granted again (a lock request waits for the file's commit
    /// too), or the host restarts (the old run's writes are lost).
    pub(super) raced_unlocked: std::collections::BTreeSet<usize>,
}

impl LockModel {
    /// A client other than `c` whose kernel holds the lock by a grant
    /// since the last fault.
    fn live_holder_besides(&self, c: usize) -> Option<usize> {
        self.holders
            .iter()
            .find(|&(&o, &live)| o != c && live && !self.raced.contains(&o))
            .map(|(&o, _)| o)
    }

    /// The host's processes died with it: the program on the host too.
    pub(super) fn host_crashed(&mut self) {
        self.host_program = false;
        // Writes of the old run not yet committed are lost with it.
        self.raced_unlocked.clear();
        self.fault();
    }

    /// A fault: every lock held now no longer counts.
    pub(super) fn fault(&mut self) {
        for live in self.holders.values_mut() {
            *live = false;
        }
    }
}

impl Sim {
    /// One step of client `c`'s locked update of `LOCKED`.
    pub fn locked_step(&mut self, c: usize, data: bytes::Bytes) -> Result<(), Violation> {
        if self.locks.steps.len() < self.kernels.len() {
            self.locks.steps.resize(self.kernels.len(), Step::Idle);
            self.locks.waiting.resize(self.kernels.len(), false);
            self.locks.asked.resize(self.kernels.len(), None);
            self.locks.signaled.resize(self.kernels.len(), false);
        }
        if self.locks.waiting[c] {
            return Ok(());
        }
        let whole = |fh, kind| Op::SetLock {
            fh,
            owner: OWNER,
            range: ByteRange::WHOLE,
            kind,
            wait: true,
        };
        let op = match self.locks.steps[c] {
            Step::Idle | Step::Opening => match self.locked_ino(c) {
                None => Op::Lookup {
                    parent: Ino::ROOT,
                    name: super::name(LOCKED),
                },
                Some(ino) => Op::Open {
                    ino,
                    mode: OpenFor::Write,
                    truncate: false,
                },
            },
            Step::Open(fh) => whole(fh, Some(LockKind::Exclusive)),
            Step::Locking(_) => return Ok(()),
            Step::Locked(fh) => Op::Read {
                fh,
                offset: 0,
                size: 4 * wormhole_core::proto::CHUNK_SIZE as u32,
            },
            Step::Read(fh) => Op::Write {
                fh,
                offset: 0,
                data,
                append: false,
            },
            Step::Written(fh) => whole(fh, None),
            Step::Unlocking(_) => return Ok(()),
        };
        self.locks.steps[c] = match (self.locks.steps[c], &op) {
            (Step::Idle | Step::Opening, _) => Step::Opening,
            (Step::Open(fh), _) => Step::Locking(fh),
            (Step::Written(fh), _) => Step::Unlocking(fh),
            (s, _) => s,
        };
        self.locks.waiting[c] = true;
        let req = self.op(c, op)?;
        if let Step::Locking(_) = self.locks.steps[c] {
            self.locks.asked[c] = Some(req);
            self.locks.signaled[c] = false;
        }
        Ok(())
    }

    /// Another thread of client `c`'s program unlocks `range` of the file
    /// (through the same descriptor, under the same owner) while the
    /// locked update waits for the lock: it holds none of it, so this
    /// lets go of nothing, and the wait goes on.
    pub fn locked_other_thread(&mut self, c: usize, range: ByteRange) -> Result<(), Violation> {
        let Some(&Step::Locking(fh)) = self.locks.steps.get(c) else {
            return Ok(());
        };
        if !self.locks.waiting[c] {
            return Ok(());
        }
        self.stats.other_thread_unlocks += 1;
        if self.granted_at_host(c, fh) {
            self.locks.raced.insert(c);
        }
        let op = Op::SetLock {
            fh,
            owner: OWNER,
            range,
            kind: None,
            wait: false,
        };
        let req = self.op(c, op)?;
        self.locks.other_thread.insert((c, req));
        Ok(())
    }

    /// Client `c` gives the locked file another name, `name` in
    /// `parent` (`ln`): the host then knows it under several, and builds
    /// its path from one of them.
    pub fn locked_link(&mut self, c: usize, parent: Ino, name: Name) -> Result<(), Violation> {
        let Some(ino) = self.locked_ino(c) else {
            return Ok(());
        };
        self.stats.locked_file_links += 1;
        let op = Op::Link {
            ino,
            new_parent: parent,
            new_name: name,
        };
        self.op(c, op).map(|_| ())
    }

    /// A step of the program on the host: it lets go of the lock if it
    /// holds it, else tries to take it (`F_SETLK` on the host's file).
    pub fn host_program_step(&mut self) -> Result<(), Violation> {
        self.host_program_lock_replaced()?;
        let path = wormhole_core::host::RelPath::from(vec![super::name(LOCKED)]);
        if self.locks.host_program {
            self.note(|| "local: the host program lets go of its lock".to_string());
            self.locks.host_program = false;
            let _ = self.w.disk.local_unlock(&path);
            // The host tries a client's wait again on its own timer.
            return Ok(());
        }
        match self
            .w
            .disk
            .local_lock(&path, ByteRange::WHOLE, LockKind::Exclusive)
        {
            Ok(true) => {
                self.note(|| "local: the host program locks".to_string());
                if let Some(c) = self.locks.live_holder_besides(usize::MAX) {
                    return Err(self.violation(format!(
                        "a program on the host took the lock on {LOCKED} that client {c} holds"
                    )));
                }
                self.locks.host_program = true;
                self.stats.host_program_locks += 1;
            }
            Ok(false) => {
                self.note(|| "local: the host program is refused the lock".to_string());
                self.stats.host_program_refused += 1;
            }
            Err(_) => {}
        }
        Ok(())
    }

    /// Whether the host holds a lock for client `c`'s locked updates on
    /// the file handle `fh` is open on.
    fn granted_at_host(&self, c: usize, fh: Fh) -> bool {
        let core = &self.w.clients[c].core;
        let node = self.kernels[c]
            .handles
            .get(&fh)
            .and_then(|h| core.vfs()?.node(h.ino));
        let (Some(session), Some(node)) = (core.session(), node) else {
            return false;
        };
        let owner = wormhole_core::lock::range::RangeOwner {
            session,
            owner: OWNER,
        };
        !self.w.host.record_locks().held_by(owner, node).is_empty()
    }

    /// The program on the host holds its lock on a file a client's
    /// commit has since replaced at `LOCKED`'s path: it holds nothing on
    /// the file there now (a commit puts a new file in the old one's
    /// place, and a local program's lock stays with the file it opened;
    /// docs/filesystem.md, "Programs on the host"). Only a client whose
    /// grant another thread of its program let go writes while the
    /// program holds the lock, so in a run without such a grant this is
    /// a violation of mutual exclusion that went unseen until now.
    fn host_program_lock_replaced(&mut self) -> Result<(), Violation> {
        let path = wormhole_core::host::RelPath::from(vec![super::name(LOCKED)]);
        if !self.locks.host_program || self.w.disk.local_locked(&path) {
            return Ok(());
        }
        if !self.locks.raced_ever {
            return Err(self.violation(format!(
                "a commit replaced {LOCKED} while the program on the host held its lock"
            )));
        }
        self.note(|| "local: the host program's lock stayed on the replaced file".to_string());
        self.locks.host_program = false;
        Ok(())
    }

    /// A signal reaches client `c`'s program while it waits for the lock:
    /// its kernel interrupts the request (the mount ends it with EINTR).
    pub fn locked_interrupt(&mut self, c: usize) {
        let waiting = matches!(self.locks.steps.get(c), Some(Step::Locking(_)))
            && self.locks.waiting.get(c) == Some(&true);
        let Some(req) = self
            .locks
            .asked
            .get(c)
            .copied()
            .flatten()
            .filter(|_| waiting)
        else {
            return;
        };
        self.note(|| format!("c{c} signal: interrupt {req:?}"));
        self.locks.signaled[c] = true;
        let now = self.w.now;
        self.w.clients[c].core.interrupt(now, req);
        self.w.pump();
    }

    /// Client `c` closes its handle of `LOCKED` (which releases its
    /// lock) if it has one.
    pub fn locked_close(&mut self, c: usize) -> Result<(), Violation> {
        let fh = match self.locks.steps.get(c) {
            Some(
                Step::Open(fh)
                | Step::Locked(fh)
                | Step::Read(fh)
                | Step::Written(fh)
                | Step::Unlocking(fh)
                | Step::Locking(fh),
            ) => *fh,
            _ => return Ok(()),
        };
        if self.locks.waiting[c] {
            return Ok(());
        }
        self.locks.steps[c] = Step::Idle;
        self.op(c, Op::Release { fh }).map(|_| ())
    }

    /// The inode client `c`'s kernel holds for `LOCKED`.
    fn locked_ino(&self, c: usize) -> Option<Ino> {
        let file = self.locks.file?;
        let k = &self.kernels[c];
        k.identity
            .iter()
            .find(|&(ino, &f)| f == file && k.nlookup.get(ino).is_some_and(|&n| n > 0))
            .map(|(&ino, _)| ino)
    }

    /// Whether `ino` of client `c` is `LOCKED` (kept from the random
    /// workload).
    pub(super) fn is_locked_file(&self, c: usize, ino: Ino) -> bool {
        self.locks.file.is_some() && self.kernels[c].identity.get(&ino) == self.locks.file.as_ref()
    }

    /// A kernel request is about to go: an unlock or a close ends the
    /// kernel's hold on the lock from now on (it no longer relies on it).
    pub(super) fn lock_issued(&mut self, c: usize, op: &Op) {
        let ends = match op {
            Op::SetLock { kind: None, fh, .. } | Op::Release { fh } => {
                let file = self.kernels[c].handles.get(fh).and_then(|h| h.file);
                file.is_some() && file == self.locks.file
            }
            _ => false,
        };
        // (Another thread's unlock while the wait is out ends nothing the
        // kernel holds: `locked_other_thread`.)
        let other_thread = matches!(op, Op::SetLock { .. })
            && matches!(self.locks.steps.get(c), Some(Step::Locking(_)));
        if ends && !other_thread {
            self.locks.holders.remove(&c);
            if self.locks.raced.remove(&c) {
                self.locks.raced_unlocked.insert(c);
            }
        }
    }

    /// A kernel request of a locked update was answered: move its step on
    /// and check invariants 11 and 12.
    pub(super) fn lock_answered(
        &mut self,
        c: usize,
        req: Req,
        op: &Op,
        ctx: &Ctx,
        result: &Result<Answer, Errno>,
    ) -> Result<(), Violation> {
        if self.locks.other_thread.remove(&(c, req)) {
            // Its answer moves nothing on: the waiting thread's is the
            // locked update's.
            return Ok(());
        }
        let Some(step) = self.locks.steps.get(c).copied() else {
            return Ok(());
        };
        let ours = match (step, op) {
            (Step::Opening, Op::Lookup { name, .. }) => name.as_bytes() == LOCKED.as_bytes(),
            (Step::Opening, Op::Open { ino, .. }) => self.is_locked_file(c, *ino),
            (Step::Locking(a), Op::SetLock { fh, .. })
            | (Step::Unlocking(a), Op::SetLock { fh, .. })
            | (Step::Locked(a), Op::Read { fh, .. })
            | (Step::Read(a), Op::Write { fh, .. }) => a == *fh,
            _ => false,
        };
        if !ours {
            return Ok(());
        }
        self.locks.waiting[c] = false;
        self.locks.steps[c] = match (step, op, result) {
            (Step::Opening, Op::Open { .. }, Ok(Answer::Opened { fh, .. })) => Step::Open(*fh),
            (Step::Opening, _, _) => Step::Opening,
            // Granted after its handle was closed (a close while the
            // lock waited): the client lets it go at once.
            (Step::Locking(fh), _, Ok(Answer::Done))
                if !self.kernels[c].handles.contains_key(&fh) =>
            {
                Step::Idle
            }
            (Step::Locking(fh), _, Ok(Answer::Done)) => {
                // Held at the host as the program hears of it, once the
                // other thread's unlock is answered: a grant like any
                // other (the client asked again behind that unlock),
                // checked as any other.
                let unlocking = self.locks.other_thread.iter().any(|&(o, _)| o == c);
                if !unlocking && self.granted_at_host(c, fh) {
                    self.locks.raced.remove(&c);
                }
                self.granted(c)?;
                Step::Locked(fh)
            }
            (Step::Locking(fh), _, Err(e)) => {
                self.locks.raced.remove(&c);
                if *e == Errno::Intr {
                    // Invariant 15 (a wait whose descriptor another
                    // thread closed ends too: the liveness phase closes
                    // every handle).
                    if !self.locks.signaled[c] && self.kernels[c].handles.contains_key(&fh) {
                        return Err(self.violation(format!(
                            "client {c}'s lock wait ended with EINTR, and no signal came"
                        )));
                    }
                    self.stats.lock_waits_interrupted += 1;
                }
                Step::Open(fh)
            }
            (Step::Locked(fh), _, Ok(_)) => {
                if matches!(
                    ctx,
                    Ctx::Read {
                        checkable: true,
                        ..
                    }
                ) {
                    self.stats.locked_reads += 1;
                }
                Step::Read(fh)
            }
            (Step::Read(fh), _, Ok(_)) => Step::Written(fh),
            (Step::Read(fh), _, Err(Errno::Io)) => {
                self.stats.lost_lock_writes += 1;
                Step::Written(fh)
            }
            (Step::Locked(fh) | Step::Read(fh), _, Err(_)) => Step::Written(fh),
            (Step::Unlocking(fh), _, _) => {
                // What it wrote under a raced grant went before this
                // unlock (an unlock waits for the file's commit).
                self.locks.raced_unlocked.remove(&c);
                Step::Open(fh)
            }
            (s, _, _) => s,
        };
        Ok(())
    }

    /// Client `c` was granted the lock: no other kernel may hold it, and
    /// its handles on the file read what the last holder published.
    fn granted(&mut self, c: usize) -> Result<(), Violation> {
        self.stats.locks_granted += 1;
        // What it wrote under a grant it let go of has committed by now.
        self.locks.raced_unlocked.remove(&c);
        if self.locks.raced.contains(&c) {
            // Let go by the other thread's unlock at the host, perhaps
            // given to another meanwhile: nothing to check.
            self.locks.raced_ever = true;
            self.locks.holders.insert(c, true);
            return Ok(());
        }
        self.host_program_lock_replaced()?;
        if self.locks.host_program {
            return Err(self.violation(format!(
                "client {c} was granted the lock on {LOCKED} that a program on the host holds"
            )));
        }
        if let Some(other) = self.locks.live_holder_besides(c) {
            return Err(self.violation(format!(
                "client {c} was granted the lock on {LOCKED} that client {other} holds"
            )));
        }
        self.locks.holders.insert(c, true);
        let Some(file) = self.locks.file else {
            return Ok(());
        };
        // Only holders write the file, each before its unlock reaches the
        // host, and a holder whose lock was lost across a fault writes
        // nothing more (invariant 14), so the last commit the disk made
        // of it (since the host last crashed and may have rolled it back)
        // is the last holder's: this holder must read it, or something
        // newer.
        let floor = self.files.commits[self.locks.since..]
            .iter()
            .rev()
            .find(|(f, _, by)| *f == file && by.is_some())
            .map(|&(_, i, _)| i);
        if let Some(floor) = floor {
            for h in self.kernels[c].handles.values_mut() {
                if h.file == Some(file) {
                    h.locked_min = h.locked_min.max(floor);
                }
            }
        }
        Ok(())
    }

    /// Invariant 14, **fencing**: client `c`'s commit of `file` (#`idx`)
    /// reached the disk. If `file` is the locked updates' file, no other
    /// kernel holds the lock by a grant since the last fault: a writer
    /// whose lock was lost (its session ended, the lock went to another)
    /// must not commit what it wrote believing it still held it. A
    /// writer whose grant another thread of its program let go (`raced`)
    /// wrote without the lock, its program's own race: its commits count
    /// for nothing, also those that land behind its unlock or close
    /// (`raced_unlocked`; fs_sim seed 61276).
    pub(super) fn commit_under_lock(
        &mut self,
        c: usize,
        file: usize,
        idx: usize,
    ) -> Result<(), Violation> {
        if self.locks.file != Some(file) {
            return Ok(());
        }
        if let Some(other) = self
            .locks
            .live_holder_besides(c)
            .filter(|_| !self.locks.raced.contains(&c) && !self.locks.raced_unlocked.contains(&c))
        {
            return Err(self.violation(format!(
                "client {c} committed #{idx} of {LOCKED} while client {other} holds its lock"
            )));
        }
        Ok(())
    }

    /// Client `c`'s kernel is gone (a crash): its locked update with it.
    pub(super) fn locks_crashed(&mut self, c: usize) {
        if let Some(s) = self.locks.steps.get_mut(c) {
            *s = Step::Idle;
            self.locks.waiting[c] = false;
        }
        self.locks.holders.remove(&c);
        self.locks.raced.remove(&c);
        self.locks.raced_unlocked.remove(&c);
        self.locks.other_thread.retain(|&(o, _)| o != c);
        self.locks.fault();
    }

    /// Inodes the random workload may use: `LOCKED` is the locked
    /// updates' own.
    pub(super) fn workload_kind(&self, c: usize, ino: Ino, kind: FileKind) -> bool {
        kind != FileKind::File || !self.is_locked_file(c, ino)
    }
}
