//! The one loop that carries out a [`HostServer`]'s outputs, for every
//! place that runs a host: the I/O driver, the in-process host, the
//! simulation world and the fuzz targets.

use super::fsop::{FsOp, FsOpId, FsResult};
use super::server::{ConnId, HostEvent, HostOutput, HostServer};
use crate::Instant;
use crate::proto::HostMessage;

/// What a host server's outputs need from whoever runs it.
pub trait HostIo {
    /// Executes file operation `op` beneath the shared root. Returns its
    /// result if it is done at once; `None` if it will finish later and be
    /// reported with [`HostServer::handle_fs`]. `server` is the machine as
    /// it is at this moment (a simulation may record what it knew).
    fn fs(&mut self, server: &HostServer, op: FsOpId, fs: FsOp) -> Option<FsResult>;
    /// Delivers `msg` on `conn`, if it is still open.
    fn send(&mut self, conn: ConnId, msg: HostMessage);
    /// Closes `conn`. The server is told it closed.
    fn close(&mut self, conn: ConnId);
    /// Reports an event.
    fn event(&mut self, event: HostEvent);
}

/// Bound on outputs carried out in one [`HostServer::pump`]: a server
/// that never stops producing them is a bug, which debug builds report
/// and release builds survive (the rest waits for the next pump).
const MAX_OUTPUTS: usize = 1 << 20;

impl HostServer {
    /// Carries out every output through `io` until none is left: a result
    /// `io` has at once goes straight back in, and a connection `io`
    /// closes is reported closed. Returns how many outputs there were.
    pub fn pump(&mut self, now: Instant, io: &mut impl HostIo) -> usize {
        for done in 0..MAX_OUTPUTS {
            let Some(output) = self.poll_output() else {
                return done;
            };
            match output {
                HostOutput::Fs { op, fs } => {
                    if let Some(result) = io.fs(self, op, fs) {
                        self.handle_fs(now, op, result);
                    }
                }
                HostOutput::Send { conn, msg } => io.send(conn, msg),
                HostOutput::Close { conn } => {
                    io.close(conn);
                    self.conn_closed(now, conn);
                }
                HostOutput::Event(event) => io.event(event),
            }
        }
        debug_assert!(false, "{MAX_OUTPUTS} host outputs in one pump");
        MAX_OUTPUTS
    }
}
