//! The thread pool that runs the blocking file operations off the
//! runtime's threads.

use std::sync::Arc;
use wormhole_core::host::{FsOp, FsOpId, FsResult};

use super::HostFs;

/// A small bounded pool of threads executing [`FsOp`]s for an async shell:
/// [`FsPool::submit`] waits for room in the queue (backpressure), results
/// come back on the channel [`FsPool::new`] returns, to be fed to
/// `HostServer::handle_fs`. Runtime-agnostic (async-channel), so both
/// shells use it as is.
#[derive(Debug)]
pub struct FsPool {
    jobs: async_channel::Sender<(FsOpId, FsOp)>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// The pool is gone (shut down).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("the file operation pool is shut down")]
pub struct PoolClosed;

impl FsPool {
    /// Starts `workers` threads (at least one) serving `fs`, with room for
    /// `queue` operations waiting. The results channel is unbounded: what
    /// is in it is bounded by what was submitted, which the core bounds
    /// (operations in flight per session).
    pub fn new(
        fs: Arc<HostFs>,
        workers: usize,
        queue: usize,
    ) -> std::io::Result<(FsPool, async_channel::Receiver<(FsOpId, FsResult)>)> {
        let (jobs, rx) = async_channel::bounded::<(FsOpId, FsOp)>(queue.max(1));
        let (done, results) = async_channel::unbounded();
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let (rx, done, fs) = (rx.clone(), done.clone(), fs.clone());
            let h = std::thread::Builder::new()
                .name(format!("wormhole-fs-{i}"))
                .spawn(move || {
                    while let Ok((op, fsop)) = rx.recv_blocking() {
                        let result = fs.execute(fsop);
                        if done.send_blocking((op, result)).is_err() {
                            break;
                        }
                    }
                })?;
            handles.push(h);
        }
        Ok((
            FsPool {
                jobs,
                workers: handles,
            },
            results,
        ))
    }

    /// Queues an operation, waiting while the queue is full.
    pub async fn submit(&self, op: FsOpId, fs: FsOp) -> Result<(), PoolClosed> {
        self.jobs.send((op, fs)).await.map_err(|_| PoolClosed)
    }

    /// Queues an operation if there is room; gives it back if not.
    pub fn try_submit(&self, op: FsOpId, fs: FsOp) -> Result<(), (FsOpId, FsOp)> {
        self.jobs.try_send((op, fs)).map_err(|e| e.into_inner())
    }

    /// Stops taking operations, lets the workers finish what is queued and
    /// waits for them (blocks: call it from a blocking context).
    pub fn shutdown(mut self) {
        self.jobs.close();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for FsPool {
    fn drop(&mut self) {
        // Workers end once the queue is drained; nobody waits for them here
        // (this may run on an executor thread).
        self.jobs.close();
    }
}
