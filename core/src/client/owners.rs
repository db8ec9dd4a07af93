//! Whose files the kernel is told they are, and which owner changes a
//! client may ask for (`docs/permissions.md`).
//!
//! The host announces how it treats owners ([`Owners`]) in its hello.
//! Acting as one host user for every client (the default), files of that
//! user show as the mounting user's, so the person who mounted owns what
//! the host's user owns, as sshfs's `idmap=user` does; a chown to anyone
//! else is refused, as it would be for that user. With owners preserved,
//! ids pass both ways unchanged. Attributes keep the host's ids inside
//! the core (the cache, leases, the simulation compare them with the
//! host's); only answers to the kernel are mapped, in one place.

use super::{Answer, ClientCore};
use crate::proto::{Attr, Errno, NodeId, Owner, Owners, SetAttr};

impl ClientCore {
    /// The host's user, if it acts as one and this mount maps it to its
    /// own ([`super::ClientConfig::local_user`]).
    fn mapped(&self) -> Option<(Owner, u32, u32)> {
        match (self.cfg.local_user, self.owners?) {
            (Some(local), Owners::HostUser { uid, gid }) => Some((local, uid, gid)),
            _ => None,
        }
    }

    /// The owner and group the kernel is shown for `attr`.
    fn show(&self, attr: &mut Attr) {
        if let Some((local, uid, gid)) = self.mapped() {
            if attr.uid == uid {
                attr.uid = local.uid;
            }
            if attr.gid == gid {
                attr.gid = local.gid;
            }
        }
    }

    /// Maps every attribute in an answer for the kernel.
    pub(super) fn show_answer(&self, answer: &mut Answer) {
        match answer {
            Answer::Entry { attr, .. }
            | Answer::Created { attr, .. }
            | Answer::Attr { attr, .. } => self.show(attr),
            Answer::Dir(items) => items.iter_mut().for_each(|i| self.show(&mut i.attr)),
            Answer::Opened { .. }
            | Answer::Data(_)
            | Answer::Written(_)
            | Answer::Link(_)
            | Answer::StatFs(_)
            | Answer::Xattr(_)
            | Answer::XattrSize(_)
            | Answer::Lock(_)
            | Answer::Done => {}
        }
    }

    /// The owner to ask the host to give a new file, for a kernel
    /// request by `caller`: the caller, where the host preserves owners;
    /// else none (the host's user owns it).
    pub(super) fn owner_for_host(&self, caller: Option<Owner>) -> Option<Owner> {
        match self.owners {
            Some(Owners::Preserved) => caller,
            _ => None,
        }
    }

    /// The owner and group the host gives a file this client makes in
    /// directory `dir` for `caller`: its user's, if it acts as one; the
    /// caller's where owners are preserved (the group the directory's,
    /// if it has the set-group-ID bit); else, not known here, the
    /// directory's.
    pub(super) fn new_file_owner(&self, dir: NodeId, caller: Option<Owner>) -> Option<(u32, u32)> {
        let dir = self.cache.peek_attr(dir).map(|a| (a.uid, a.gid, a.mode));
        match (self.owners, caller, dir) {
            (Some(Owners::HostUser { uid, gid }), _, _) => Some((uid, gid)),
            (Some(Owners::Preserved), Some(c), Some((_, gid, mode))) if mode & 0o2000 != 0 => {
                Some((c.uid, gid))
            }
            (Some(Owners::Preserved), Some(c), _) => Some((c.uid, c.gid)),
            (_, _, dir) => dir.map(|(uid, gid, _)| (uid, gid)),
        }
    }

    /// The owner change the kernel asked for (in the kernel's ids), as
    /// the host's ids, or `None` where it changes nothing. Acting as the
    /// host's user, a client can give a file only to itself: a chown
    /// that names the file's present owner (as the kernel shows it) is
    /// no change, any other is EPERM (so is any, if the present owner is
    /// not known).
    pub(super) fn chown_for_host(
        &self,
        set: &SetAttr,
        now: Option<&Attr>,
    ) -> Result<SetAttr, Errno> {
        if !set.chowns() {
            return Ok(*set);
        }
        match self.owners {
            Some(Owners::Preserved) => Ok(*set),
            Some(Owners::HostUser { .. }) | None => {
                let mut shown = now.ok_or(Errno::Perm)?.clone();
                self.show(&mut shown);
                let same_uid = set.uid.is_none_or(|u| u == shown.uid);
                let same_gid = set.gid.is_none_or(|g| g == shown.gid);
                if same_uid && same_gid {
                    Ok(SetAttr {
                        uid: None,
                        gid: None,
                        ..*set
                    })
                } else {
                    Err(Errno::Perm)
                }
            }
        }
    }
}
