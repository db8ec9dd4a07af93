//! A host that does not answer (decision of 2026-12-04; `docs/filesystem.md`,
//! "Partitions").
//!
//! A partition looks like silence: the connection stays up (QUIC notices
//! only at its idle timeout, 30 s) and requests get no answer. So the
//! client listens: a request that waits while nothing at all comes from
//! the host sends a `Ping` (which the host answers at once, without its
//! disk, so a slow disk is not taken for a partition); with no word for
//! [`ClientConfig::unreachable_after`] the host is *unreachable* until
//! anything comes from it again. A lost connection makes it unreachable
//! at once.
//!
//! While it is unreachable, what the cache holds answers, fresh or not:
//! lookups, attributes, listings, opens for reading of files whose every
//! chunk is cached, and reads. Each answer is a whole version the host had
//! when last heard from, never a mix, and the kernel is told to keep none
//! of it (no TTL), so its first request after the host is back gets the
//! current one. The rest (a miss, any change) fails with ETIMEDOUT
//! [`ClientConfig::unreachable_wait`] after it was made, instead of
//! waiting out the request timeout. Writes already buffered wait for the
//! host as they do across a reconnect (their flush up to the request
//! timeout).
//!
//! [`ClientConfig::unreachable_after`]: super::ClientConfig::unreachable_after
//! [`ClientConfig::unreachable_wait`]: super::ClientConfig::unreachable_wait

use super::{Answer, ClientCore, ClientEvent, ClientOutput, Op, OpPart, Phase, Purpose, Req};
use crate::Instant;
use crate::cache::{CacheKey, ChunkKey, EntryState};
use crate::proto::{Attr, CHUNK_SIZE, Errno, OpenFor, Request, RequestId};
use bytes::Bytes;
use std::time::Duration;

/// Whether a kernel request waits on `purpose`: those fail once the host
/// has been unreachable for a while. (Write transactions and lock traffic
/// do not: they wait for the host as across a reconnect.)
pub(super) fn for_the_kernel(purpose: &Purpose) -> bool {
    matches!(
        purpose,
        Purpose::Fetch(_)
            | Purpose::DirPage { .. }
            | Purpose::Op { .. }
            | Purpose::OpenAhead { .. }
            | Purpose::ReadThrough { .. }
    )
}

impl ClientCore {
    /// Whether the host cannot be reached now (no connection, or no word
    /// from it for `unreachable_after`): the cache answers past its TTL.
    pub fn host_unreachable(&self) -> bool {
        self.unreachable_since.is_some()
    }

    pub(super) fn unreachable(&self) -> bool {
        self.host_unreachable()
    }

    /// Something came from the host.
    pub(super) fn heard(&mut self, now: Instant) {
        self.heard_at = now;
        if self.phase == Phase::Ready && self.unreachable_since.take().is_some() {
            self.out
                .push_back(ClientOutput::Event(ClientEvent::Reachable));
        }
    }

    /// The connection is gone: unreachable until it is back.
    pub(super) fn connection_gone(&mut self, now: Instant) {
        self.probing = false;
        if self.unreachable_since.is_none() {
            self.unreachable_since = Some(now);
            self.serve_waiting_from_cache(now);
        }
    }

    /// The connection is up (again).
    pub(super) fn connection_back(&mut self, now: Instant) {
        self.heard_at = now;
        self.probing = false;
        self.unreachable_since = None;
    }

    /// When the request that has waited longest for the host was made.
    fn oldest_waiting(&self) -> Option<Instant> {
        self.in_flight
            .values()
            .filter(|f| for_the_kernel(&f.purpose) || matches!(f.purpose, Purpose::Write { .. }))
            .map(|f| self.made_at(f.deadline))
            .min()
    }

    /// When a request with `deadline` was made.
    fn made_at(&self, deadline: Instant) -> Instant {
        deadline.saturating_sub(self.cfg.request_timeout)
    }

    /// When a kernel request waiting on a request with `deadline` fails,
    /// the host having been unreachable since `since`.
    fn unreachable_deadline(&self, since: Instant, deadline: Instant) -> Instant {
        self.made_at(deadline).max(since) + self.cfg.unreachable_wait
    }

    /// When [`Self::watch_host`] is next due.
    pub(super) fn watch_timeout(&self) -> Option<Instant> {
        let silence = match (self.phase, self.unreachable_since, self.oldest_waiting()) {
            (Phase::Ready, None, Some(oldest)) => {
                let quiet = self.heard_at.max(oldest);
                Some(if self.probing {
                    quiet + self.cfg.unreachable_after
                } else {
                    quiet + self.cfg.unreachable_after / 3
                })
            }
            _ => None,
        };
        let late = self.unreachable_since.and_then(|since| {
            let flights = self
                .in_flight
                .values()
                .filter(|f| for_the_kernel(&f.purpose) && !super::locks::never_fails(&f.request))
                .map(|f| f.deadline);
            let queued = self
                .queued
                .iter()
                .filter(|q| for_the_kernel(&q.0) && !super::locks::never_fails(&q.1))
                .map(|q| q.2);
            flights
                .chain(queued)
                .map(|d| self.unreachable_deadline(since, d))
                .min()
        });
        [silence, late].into_iter().flatten().min()
    }

    /// Probes a silent host, declares it unreachable, and fails the kernel
    /// requests that waited too long for an unreachable one.
    pub(super) fn watch_host(&mut self, now: Instant) {
        if let (Phase::Ready, None, Some(oldest)) =
            (self.phase, self.unreachable_since, self.oldest_waiting())
        {
            let quiet = self.heard_at.max(oldest);
            if now >= quiet + self.cfg.unreachable_after {
                self.unreachable_since = Some(now);
                self.out
                    .push_back(ClientOutput::Event(ClientEvent::Unreachable));
                self.serve_waiting_from_cache(now);
            } else if !self.probing && now >= quiet + self.cfg.unreachable_after / 3 {
                self.probing = true;
                self.send(now, Purpose::Probe, Request::Ping);
            }
        }
        let Some(since) = self.unreachable_since else {
            return;
        };
        let late: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| {
                for_the_kernel(&f.purpose)
                    && !super::locks::never_fails(&f.request)
                    && now >= self.unreachable_deadline(since, f.deadline)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            // The entry stays, abandoned, so that a late reply that opened
            // a handle closes it.
            if let Some(f) = self.in_flight.get_mut(&id) {
                let purpose = std::mem::replace(&mut f.purpose, Purpose::Abandoned);
                self.fail_purpose(now, purpose, Errno::TimedOut);
            }
        }
        let (timeout, wait) = (self.cfg.request_timeout, self.cfg.unreachable_wait);
        let is_late = |q: &(Purpose, Request, Instant)| {
            for_the_kernel(&q.0)
                && !super::locks::never_fails(&q.1)
                && now >= q.2.saturating_sub(timeout).max(since) + wait
        };
        if self.queued.iter().any(is_late) {
            let (late, keep) = std::mem::take(&mut self.queued)
                .into_iter()
                .partition(is_late);
            self.queued = keep;
            for (purpose, _, _) in late {
                self.fail_purpose(now, purpose, Errno::TimedOut);
            }
        }
    }

    /// The host just became unreachable: kernel requests waiting for it
    /// that the cache can answer are answered now.
    fn serve_waiting_from_cache(&mut self, now: Instant) {
        // Fetches of data the cache holds, stale: that data answers their
        // waiters (and stays stale).
        let keys: Vec<CacheKey> = self
            .in_flight
            .values()
            .map(|f| &f.purpose)
            .chain(self.queued.iter().map(|q| &q.0))
            .filter_map(|p| match p {
                Purpose::Fetch(key) => Some(key.clone()),
                Purpose::DirPage { node, .. } => Some(CacheKey::Dir(*node)),
                _ => None,
            })
            .collect();
        for key in keys {
            self.cache.serve_stale(now, &key);
        }
        // Lookups and opens, which ask the host directly.
        let asked: Vec<(RequestId, Req, Op)> = self
            .in_flight
            .iter()
            .filter_map(|(&id, f)| match &f.purpose {
                Purpose::Op {
                    req,
                    op,
                    part: OpPart::First,
                } => Some((id, *req, op.clone())),
                _ => None,
            })
            .collect();
        for (id, req, op) in asked {
            if self.answer_from_cache(now, req, &op)
                && let Some(f) = self.in_flight.get_mut(&id)
            {
                f.purpose = Purpose::Abandoned;
            }
        }
        let queued = std::mem::take(&mut self.queued);
        for (purpose, request, deadline) in queued {
            let answered = match &purpose {
                Purpose::Op {
                    req,
                    op,
                    part: OpPart::First,
                } => self.answer_from_cache(now, *req, op),
                _ => false,
            };
            if !answered {
                self.queued.push_back((purpose, request, deadline));
            }
        }
    }

    /// Answers a lookup, or an open for reading, from what the cache
    /// holds, fresh or not; false if it holds too little.
    pub(super) fn answer_from_cache(&mut self, now: Instant, req: Req, op: &Op) -> bool {
        match op {
            Op::Lookup { parent, name } => {
                let Ok(pnode) = self.node(*parent) else {
                    return false;
                };
                let negative = CacheKey::Negative {
                    parent: pnode,
                    name: name.clone(),
                };
                let held = |s| matches!(s, EntryState::Cached | EntryState::Stale);
                if held(self.cache.state(now, &negative)) {
                    self.reply(req, Err(Errno::NoEnt));
                    return true;
                }
                let listed = self.cache.peek_dir(pnode).map(|entries| {
                    entries
                        .iter()
                        .find(|e| &e.name == name)
                        .map(|e| e.attr.clone())
                });
                let attr: Attr = match listed {
                    Some(None) => {
                        self.reply(req, Err(Errno::NoEnt));
                        return true;
                    }
                    // The attributes learned last, if newer than the listing.
                    Some(Some(a)) => self.cache.peek_attr(a.node).cloned().unwrap_or(a),
                    None => {
                        let vfs = self.vfs.as_ref();
                        let node = vfs
                            .and_then(|v| v.child(*parent, name))
                            .and_then(|ino| vfs.and_then(|v| v.node(ino)));
                        match node.and_then(|n| self.cache.peek_attr(n)) {
                            Some(a) => a.clone(),
                            None => return false,
                        }
                    }
                };
                let Some(Ok(ino)) = self
                    .vfs
                    .as_mut()
                    .map(|v| v.learn(*parent, name.clone(), &attr, true))
                else {
                    return false;
                };
                let attr = self.with_local_changes(&attr);
                self.reply(
                    req,
                    Ok(Answer::Entry {
                        ino,
                        attr,
                        ttl: Duration::ZERO,
                    }),
                );
                true
            }
            Op::Open {
                ino,
                mode: OpenFor::Read,
                truncate: false,
            } => {
                let Ok(node) = self.node(*ino) else {
                    return false;
                };
                if self.writes.contains_key(&node) {
                    return false;
                }
                let Some(attr) = self.cache.peek_attr(node).cloned() else {
                    return false;
                };
                let whole = (0..attr.size.div_ceil(CHUNK_SIZE as u64)).all(|index| {
                    let key = CacheKey::Chunk(ChunkKey {
                        file: attr.key,
                        version: attr.version,
                        index,
                    });
                    matches!(
                        self.cache.state(now, &key),
                        EntryState::Cached | EntryState::Stale | EntryState::Evicted
                    )
                });
                if !whole {
                    return false;
                }
                let fh = self.open_handle(now, *ino, None, attr, Bytes::new(), OpenFor::Read);
                self.reply(
                    req,
                    Ok(Answer::Opened {
                        fh,
                        keep_cache: true,
                    }),
                );
                true
            }
            _ => false,
        }
    }
}
