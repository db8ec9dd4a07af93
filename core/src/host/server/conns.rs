//! Connections and sessions: Hello and its proof, resume, the grace
//! period of a detached session, and its end.

use super::*;

impl HostServer {
    /// A client connected; `exporter` is its TLS session's keying material
    /// under [`auth::EXPORTER_LABEL`]. Its first message must be Hello.
    pub fn conn_opened(&mut self, _now: Instant, conn: ConnId, exporter: [u8; 32]) {
        if !self.accepting() || self.conns.len() >= self.cfg.max_sessions * 2 {
            self.out.push_back(HostOutput::Close { conn });
            return;
        }
        self.conns.insert(
            conn,
            Conn {
                exporter,
                session: None,
            },
        );
    }

    /// A connection closed. Its session keeps its locks, handles and
    /// transactions for `session_grace`, so a reconnect can resume it.
    pub fn conn_closed(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(sid) = c.session
            && let Some(s) = self.sessions.get_mut(&sid)
            && s.conn == Some(conn)
        {
            s.conn = None;
            s.detached_at = Some(now);
        }
        self.update_hosting();
    }

    fn update_hosting(&mut self) {
        let connected = self.sessions.values().any(|s| s.conn.is_some());
        match (self.state, connected) {
            (HostState::Listening | HostState::Idle, true) => self.set_state(HostState::Hosting),
            (HostState::Hosting, false) => self.set_state(HostState::Idle),
            _ => {}
        }
    }

    /// A message arrived on `conn`. A message that does not decode fails
    /// alone: the error goes back to the shell, which resets that stream.
    pub fn handle_message(
        &mut self,
        now: Instant,
        conn: ConnId,
        bytes: &bytes::Bytes,
    ) -> Result<(), CodecError> {
        let msg = ClientMessage::decode_shared(bytes)?;
        self.handle_request(now, conn, msg);
        Ok(())
    }

    /// A decoded request arrived on `conn`.
    pub fn handle_request(&mut self, now: Instant, conn: ConnId, msg: ClientMessage) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let ClientMessage { id, request } = msg;
        let Some(session) = c.session else {
            return self.hello(now, conn, id, request);
        };
        if let Request::Hello { .. } = request {
            return self.send(conn, id, Err(Errno::Inval));
        }
        let over = self
            .sessions
            .get(&session)
            .is_none_or(|s| s.ops >= self.cfg.max_ops_per_session);
        if over {
            return self.send(conn, id, Err(Errno::Again));
        }
        if let Err(e) = self.dispatch(now, session, id, request) {
            self.send(conn, id, Err(e));
        }
    }

    fn hello(&mut self, now: Instant, conn: ConnId, id: RequestId, request: Request) {
        let Some(exporter) = self.conns.get(&conn).map(|c| c.exporter) else {
            return;
        };
        let Request::Hello {
            version,
            proof,
            resume,
        } = request
        else {
            return self.refuse(conn, id);
        };
        if !auth::verify(&self.secret, &exporter, &proof) {
            return self.refuse(conn, id);
        }
        if version != u16::from(crate::codec::PROTOCOL_VERSION) {
            self.send(conn, id, Err(Errno::NotSup));
            self.out.push_back(HostOutput::Close { conn });
            self.conns.remove(&conn);
            return;
        }
        // A session still attached to another connection is taken over:
        // its client moved to a new path (or lost the old one before this
        // host noticed). Only that client knows the session id, sent to it
        // inside its authenticated connection, so a ticket alone does not
        // let anyone else take it. Requests in flight on the old connection
        // are answered on the new one; the client sent nothing there while
        // moving, or re-sends after resuming.
        let resumable = resume.filter(|s| self.sessions.contains_key(s));
        if let Some(old) = resumable
            .and_then(|s| self.sessions.get(&s))
            .and_then(|s| s.conn)
            .filter(|&old| old != conn)
        {
            self.conns.remove(&old);
            self.out.push_back(HostOutput::Close { conn: old });
        }
        let (session, resumed) = match resumable {
            Some(s) => (s, true),
            None => {
                if self.sessions.len() >= self.cfg.max_sessions {
                    self.send(conn, id, Err(Errno::Busy));
                    self.out.push_back(HostOutput::Close { conn });
                    self.conns.remove(&conn);
                    return;
                }
                let mut sid = [0u8; 16];
                self.rng.fill(&mut sid);
                let sid = SessionId(sid);
                self.sessions.insert(sid, Session::default());
                (sid, false)
            }
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            s.conn = Some(conn);
            s.detached_at = None;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(session);
        }
        let _ = now;
        // Hello is only accepted once the scan has read the root.
        let Some(root) = self.root.as_ref().map(|r| to_attr(NodeId::ROOT, r)) else {
            return self.send(conn, id, Err(Errno::Io));
        };
        self.send(
            conn,
            id,
            Ok(Reply::HelloAck {
                session,
                root,
                limits: Limits {
                    chunk_size: CHUNK_SIZE as u32,
                    max_dir_page: MAX_DIR_PAGE as u32,
                    lock_ttl_ms: u32::try_from(self.cfg.lock.ttl.as_millis()).unwrap_or(u32::MAX),
                    read_only: self.cfg.read_only,
                    owners: self.cfg.owners,
                },
            }),
        );
        self.out
            .push_back(HostOutput::Event(HostEvent::Authenticated {
                conn,
                session,
                resumed,
            }));
        if resumed {
            self.recall_again(session);
        }
        self.update_hosting();
    }

    /// A wrong proof (or anything but Hello first) gets EACCES and nothing
    /// else: no session, no data, and the connection closes.
    fn refuse(&mut self, conn: ConnId, id: RequestId) {
        self.send(conn, id, Err(Errno::Acces));
        self.out.push_back(HostOutput::Close { conn });
        self.out
            .push_back(HostOutput::Event(HostEvent::AuthRefused { conn }));
        self.conns.remove(&conn);
    }

    fn send(&mut self, conn: ConnId, id: RequestId, result: Result<Reply, Errno>) {
        self.out.push_back(HostOutput::Send {
            conn,
            msg: HostMessage::Reply { id, result },
        });
    }

    /// Replies to a session's request on its current connection; a session
    /// without one will re-ask after it resumes.
    pub(super) fn answer(
        &mut self,
        session: SessionId,
        id: RequestId,
        result: Result<Reply, Errno>,
    ) {
        if let Some(conn) = self.sessions.get(&session).and_then(|s| s.conn) {
            self.send(conn, id, result);
        }
    }

    /// Sends `msg` to `session` on its current connection, if it has one.
    pub(super) fn push(&mut self, session: SessionId, msg: HostMessage) {
        if let Some(conn) = self.sessions.get(&session).and_then(|s| s.conn) {
            self.out.push_back(HostOutput::Send { conn, msg });
        }
    }

    /// Tells every connected session but `except` that `node` changed.
    pub(super) fn broadcast(
        &mut self,
        except: Option<SessionId>,
        node: NodeId,
        what: Invalidation,
    ) {
        let conns: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(sid, _)| Some(**sid) != except)
            .filter_map(|(_, s)| s.conn)
            .collect();
        for conn in conns {
            self.out.push_back(HostOutput::Send {
                conn,
                msg: HostMessage::Invalidate { node, what },
            });
        }
    }

    pub(super) fn end_session(&mut self, now: Instant, session: SessionId) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        self.locks.release_session(now, session);
        let held = self.ranges.holders(None, Some(session));
        self.ranges.release_session(session);
        self.session_gone_from_host(session, held);
        self.drain_record_locks();
        for h in s.handles {
            if let Some(handle) = self.handles.remove(&h) {
                self.fs(Purpose::Housekeeping, FsOp::Close { handle: handle.fs });
            }
        }
        for t in s.txns {
            if self.txns.remove(&t).is_some() {
                self.fs(Purpose::Housekeeping, FsOp::StageAbort { txn: t });
            }
        }
        if let Some(conn) = s.conn {
            self.conns.remove(&conn);
            self.out.push_back(HostOutput::Close { conn });
        }
        self.out
            .push_back(HostOutput::Event(HostEvent::SessionEnded { session }));
        self.drain_locks(now);
        self.update_hosting();
    }
}
