//! A deterministic simulation of the file system: one host on an in-memory
//! disk and three or four mount clients ([`wormhole_core::testkit::World`]),
//! a random workload of kernel operations interleaved with faults, and
//! safety invariants checked after every event.
//!
//! The workload ([`workload`]) creates, opens, writes, flushes, fsyncs,
//! releases, reads whole files, stats, lists, renames, unlinks, makes
//! directories, truncates and forgets, from every client at once, while the
//! network delays and reorders messages (a seeded `max_delay` per seed), a
//! client is partitioned away for less or more than the 30 s lock ttl, the
//! host crashes and restarts on what its disk kept, clients crash, and a
//! client moves its session to a new path (a relayed mount going direct)
//! while the old connection's messages are still on their way and its
//! close reaches the host late.
//!
//! [`Sim`] checks, after every single event of the world, each invariant
//! by its own means (never by asking the code under test to validate
//! itself):
//!
//! 1. **Locks**: the host's lock table passes its own
//!    [`check_invariants`](wormhole_core::lock::LockTable::check_invariants)
//!    *and* a pairwise check written here: no two locks on one node (or a
//!    subtree lock above it) where either is exclusive.
//! 2. **Fencing**: every staging operation the host had the disk execute
//!    (begin, write, truncate, commit) carried the token of a lock that, at
//!    that moment, was live, exclusive, owned by the transaction's session
//!    and covered the file (from [`wormhole_core::testkit::FsRecord`]).
//! 3. **Durability**: when a Flush, Fsync or Release answers `Done`, every
//!    write acknowledged on that file before it is in a commit the disk
//!    already executed, of that very file; after a host crash every file's
//!    content is its last commit.
//! 4. **Close-to-open**: a whole-file read through a handle opened after a
//!    close was acknowledged returns exactly one committed content of that
//!    file, that one or a later one (never a mix, never older).
//! 5. **Inode numbers**: a per-client model of the kernel's references
//!    (lookups from Entry/Created answers, minus the forgets the workload
//!    sends; open handles) is kept here; no answer may hand out an inode
//!    number still referenced for a different file. File identity is
//!    tracked here too, from the disk's operation log: a commit replaces a
//!    file's disk identity but not the file.
//! 6. **Exactly one answer** per kernel request: none unexpected, none
//!    twice, and after the liveness phase none missing.
//! 7. **Cache ttl**: every attribute a kernel is given (GetAttr, Lookup,
//!    Create, ReadDir) reached that client from the host no longer than
//!    the attribute/listing ttl ago, measured from the messages the
//!    world delivered ([`wormhole_core::testkit::World::attr_log`]); an
//!    unlinked file answered from its open handle is exempt (nothing but
//!    this client can change it).
//!
//! Invariants 8–10 (whole versions, no holes after a loss, commits only
//! by a client that asked) are in `model.rs`; 11 and 12 are the record
//! locks' (`model/locks.rs`): each client now and then takes a step of a
//! locked update of one file (lock, read, write, unlock), and no two
//! kernels may hold the lock at once, and a read under it returns the
//! last holder's commit or a newer one.
//!
//! **Liveness** ([`Sim::converge`]): heal everything, restart the host if
//! it is down, reconnect every client, release every handle and forget
//! every lookup, let time run; then every request is answered, every write
//! transaction ended, every lock released or expired, every client Ready.
//!
//! Determinism: all randomness comes from the seed, every map is ordered,
//! so a seed gives the same [`Sim::trace`] every time.
//!
//! Replaying a failing seed: `WORMHOLE_FS_SEED=<n> cargo test -p
//! wormhole-tests --test fs_sim -- --nocapture` prints its whole trace.

mod model;
pub mod workload;

pub use model::{FsStats, Local, Sim, Violation};
