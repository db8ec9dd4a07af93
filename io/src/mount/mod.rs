//! The mount: a FUSE session, the mount driver that runs a
//! [`ClientCore`], the disk (L2) cache, and a [`Transport`] to the host.
//!
//! The core lives behind one lock shared by fuser's thread and the driver,
//! a task on any [`quinn::Runtime`]; both run the sans-IO loop of the core
//! contract: feed it an input, carry out every output. fuser's thread
//! feeds kernel requests, the driver host messages, finished connects,
//! disk-cache reads and timers. Neither makes a file-system decision.
//!
//! Threads, and why:
//!
//! * fuser's session thread reads `/dev/fuse` and feeds each request to
//!   the core itself ([`fuse`]): what the core answers from its
//!   cache is answered there and then, without waking another thread;
//!   the rest is answered by the driver when the host replies.
//! * The disk cache runs on its own threads: chunk files are written and
//!   read with blocking calls, which must not stall the driver's runtime.
//!   fuser's thread, which blocks on the kernel anyway, reads a chunk a
//!   request of its own needs itself when the reading thread is idle and
//!   no other kernel request waits (waking that thread, and then the
//!   driver, cost more than the read).
//! * Kernel invalidations are sent from their own thread: the kernel may
//!   hold the inode's lock while it waits for a reply from us, so a
//!   notification written from the driver could wait for the driver.
//!
//! The transport is a small trait: [`Transport::connect`] gives a
//! [`HostLink`](crate::net::HostLink), two channels of encoded messages.
//! [`QuicTransport`](crate::net::QuicTransport) implements it, and so does
//! the in-process host of the `testkit` feature.
//!
//! Here: [`Mount`] (this file), the [`driver`] task and the state it
//! shares with fuser's thread, the [`fuse`] adapter and the kernel
//! notifications, and the [`disk_cache`].

mod disk_cache;
mod driver;
mod fuse;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_lite::future::Future;
use thiserror::Error;
use tracing::{debug, info, warn};
use wormhole_core::client::{ClientConfig, ClientEvent};
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::proto::Owner;

use crate::net::Transport;
use disk_cache::DiskCache;
use driver::{MountDriver, Shared};
use fuse::{WormholeFs, start_notifier};

/// Connection events kept for a slow reader of [`Mount::events`].
const EVENT_QUEUE: usize = 64;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// The client's timing and bounds.
    pub client: ClientConfig,
    /// The ticket's secret, proved to the host.
    pub secret: TicketSecret,
    /// Where chunks are kept across mounts; `None`: no disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Mount read-only in the kernel as well.
    pub read_only: bool,
    /// Let every local user use the mount (FUSE's `allow_other`), each
    /// checked by the kernel against the owners and modes it shows
    /// (`default_permissions`). Without it only the mounting user can.
    pub allow_other: bool,
    /// Seed of the client's PRNG.
    pub seed: [u8; 32],
}

impl MountOptions {
    /// Options with a PRNG seed from the operating system.
    pub fn new(secret: TicketSecret) -> Result<Self, MountError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| MountError::NoRandomness)?;
        Ok(MountOptions {
            client: ClientConfig {
                local_user: Some(mounting_user()),
                ..ClientConfig::default()
            },
            secret,
            cache_dir: None,
            read_only: false,
            allow_other: false,
            seed,
        })
    }
}

/// Who is mounting: the user the host's user is shown as. Under `sudo`
/// (root, with `SUDO_UID` set) it is the person who ran sudo, not root:
/// the README mounts with sudo, and the files are theirs.
pub fn mounting_user() -> Owner {
    let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
    let from_sudo = |var: &str| std::env::var(var).ok()?.parse::<u32>().ok();
    match (uid.is_root(), from_sudo("SUDO_UID"), from_sudo("SUDO_GID")) {
        (true, Some(uid), Some(gid)) => Owner { uid, gid },
        _ => Owner {
            uid: uid.as_raw(),
            gid: gid.as_raw(),
        },
    }
}

/// Whether `/etc/fuse.conf`'s text lets ordinary users mount with
/// `allow_other` (a `user_allow_other` line that is not a comment).
fn fuse_conf_allows_other(text: &str) -> bool {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .any(|l| l == "user_allow_other")
}

/// Refuses, with what to do, an `allow_other` mount fusermount3 would
/// refuse: by an ordinary user on a system whose `/etc/fuse.conf` does
/// not allow it.
fn check_allow_other() -> Result<(), MountError> {
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let conf = std::fs::read_to_string(FUSE_CONF).unwrap_or_default();
    if fuse_conf_allows_other(&conf) {
        Ok(())
    } else {
        Err(MountError::AllowOther)
    }
}

const FUSE_CONF: &str = "/etc/fuse.conf";

const DEV_FUSE: &str = "/dev/fuse";

/// Why a mount failed.
#[derive(Debug, Error)]
pub enum MountError {
    /// The kernel refused the mount.
    #[error(
        "cannot mount FUSE at {mountpoint}: {source} (is /dev/fuse present, the mountpoint an \
         empty directory, and are we root or is fusermount3 installed?)"
    )]
    Fuse {
        /// Where.
        mountpoint: PathBuf,
        /// The kernel's or fusermount's error.
        source: io::Error,
    },
    /// The cache directory cannot be used.
    #[error("cache directory {dir}: {source}")]
    CacheDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
    /// The OS gave no randomness for the PRNG seed.
    #[error("the operating system gave no randomness")]
    NoRandomness,
    /// `allow_other` asked for by a user the system does not allow it.
    #[error(
        "--allow-other needs root, or a line `user_allow_other` in /etc/fuse.conf (as root: \
         echo user_allow_other >> /etc/fuse.conf)"
    )]
    AllowOther,
    /// An ordinary user on a system where only root may open
    /// `/dev/fuse` (fusermount3 opens it as the user too).
    #[error(
        "only root may use /dev/fuse on this system, so an ordinary user cannot mount (not even \
         through fusermount3): mount with sudo (add --allow-other to let other users in), or \
         have an administrator make /dev/fuse usable by users (chmod 0666 /dev/fuse, as most \
         distributions ship it)"
    )]
    DevFuseRootOnly,
}

/// A mounted Wormhole. Dropping it unmounts (lazily if busy); prefer
/// [`Mount::unmount`], which reports errors.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    events: async_channel::Receiver<ClientEvent>,
    done: async_channel::Receiver<()>,
}

impl core::fmt::Debug for Mount {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mount")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

impl Mount {
    /// Mounts at `mountpoint` a file system served through `transport`,
    /// its driver running on `runtime`. Blocks for the mount itself (a
    /// system call and the kernel's INIT), not for the host: operations
    /// wait for the connection inside the core. Call it from within the
    /// runtime (e.g. inside [`Shell::block_on`](crate::Shell::block_on)):
    /// the driver is spawned on it.
    pub fn new(
        runtime: Arc<dyn quinn::Runtime>,
        transport: impl Transport,
        mountpoint: &Path,
        options: MountOptions,
    ) -> Result<Mount, MountError> {
        let disk = match &options.cache_dir {
            Some(dir) => Some(DiskCache::open(dir)?),
            None => None,
        };
        let (events_tx, events) = async_channel::bounded(EVENT_QUEUE);
        let (done_tx, done) = async_channel::bounded(1);
        let (notices, notice_rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared::new(
            runtime.clone(),
            Box::new(transport),
            options.clone(),
            events_tx,
            disk,
            notices,
        )?);
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("wormhole".into()),
            fuser::MountOption::Subtype("wormhole".into()),
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
            if options.read_only {
                fuser::MountOption::RO
            } else {
                fuser::MountOption::RW
            },
        ];
        if options.allow_other {
            check_allow_other()?;
            // Other users in, each checked by the kernel as on a local
            // disk: without `default_permissions` FUSE checks nothing and
            // every user could do what the mounting user can.
            config.acl = fuser::SessionACL::All;
            config
                .mount_options
                .push(fuser::MountOption::DefaultPermissions);
        }
        if !rustix::process::geteuid().is_root()
            && rustix::fs::access(
                DEV_FUSE,
                rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
            )
            .is_err()
            && Path::new(DEV_FUSE).exists()
        {
            return Err(MountError::DevFuseRootOnly);
        }
        let session = fuser::Session::new(WormholeFs::new(shared.clone()), mountpoint, &config)
            .map_err(|source| MountError::Fuse {
                mountpoint: mountpoint.to_owned(),
                source,
            })?;
        start_notifier(notice_rx, session.notifier())?;
        match std::os::fd::AsFd::as_fd(&session).try_clone_to_owned() {
            Ok(device) => shared.lock().watch_kernel_queue(device),
            // Chunks are then read on the disk cache's thread only.
            Err(e) => debug!(error = %e, "no second descriptor of the FUSE device"),
        }
        let driver = MountDriver::new(shared.clone());
        runtime.spawn(Box::pin(async move {
            driver.run().await;
            drop(done_tx);
        }));
        let session = session.spawn().map_err(MountError::Thread)?;
        info!(mountpoint = %mountpoint.display(), "mounted");
        Ok(Mount {
            session: Some(session),
            shared,
            mountpoint: mountpoint.to_owned(),
            events,
            done,
        })
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Connection changes, as the core reports them (a bounded queue: a
    /// reader that falls behind misses some).
    pub fn events(&self) -> &async_channel::Receiver<ClientEvent> {
        &self.events
    }

    /// Unmounts and waits for fuser's thread to end. The driver then says
    /// goodbye to the host and stops; await [`Mount::stopped`] for that.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }

    /// The client cache's counters (`None` once the driver has stopped).
    pub async fn cache_stats(&self) -> Option<wormhole_core::cache::CacheStats> {
        let s = self.shared.lock();
        s.cache_stats()
    }

    /// Resolves once the driver has stopped (after an unmount).
    pub fn stopped(&self) -> impl Future<Output = ()> + use<> {
        let done = self.done.clone();
        async move {
            let _ = done.recv().await;
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            // fuser unmounts on drop; a busy mount (a panicking test that
            // left a file open) is detached so the mountpoint is not left
            // dead.
            if let Err(e) = s.umount_and_join()
                && still_our_mount(&self.mountpoint)
            {
                warn!(error = %e, mountpoint = %self.mountpoint.display(), "unmount failed; detaching");
                let _ =
                    rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// Whether a FUSE file system is still mounted at `mountpoint` (it may
/// have been unmounted from outside, and something else mounted there
/// since, which a detach must not touch).
fn still_our_mount(mountpoint: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let Ok(want) = std::path::absolute(mountpoint) else {
        return false;
    };
    // Fields: source, mount point (spaces escaped as \040), type, ...; the
    // last line for a mount point is what is mounted on top.
    table
        .lines()
        .rev()
        .find_map(|line| {
            let mut fields = line.split(' ');
            let (_, at, kind) = (fields.next(), fields.next()?, fields.next()?);
            (Path::new(&at.replace("\\040", " ")) == want).then_some(kind)
        })
        .is_some_and(|kind| kind == "fuse" || kind.starts_with("fuse."))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A detach never touches what is not a FUSE mount.
    #[test]
    fn only_a_fuse_mount_counts_as_ours() {
        assert!(!still_our_mount(Path::new("/")));
        assert!(!still_our_mount(Path::new("/proc")));
        assert!(!still_our_mount(Path::new("/no/such/mount/point")));
    }

    #[test]
    fn fuse_conf_allows_other_only_with_an_uncommented_line() {
        assert!(fuse_conf_allows_other("user_allow_other\n"));
        assert!(fuse_conf_allows_other(
            "# mount_max = 1000\n  user_allow_other  # for wormhole\n"
        ));
        assert!(!fuse_conf_allows_other(""));
        assert!(!fuse_conf_allows_other("#user_allow_other\n"));
        assert!(!fuse_conf_allows_other("user_allow_other_not\n"));
    }
}
