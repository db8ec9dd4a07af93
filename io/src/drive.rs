//! The drive loop every driver runs (pair agent, host, mount, in-process
//! host): pass over all sources, carrying out the core's outputs, until a
//! pass finds nothing to do.

use core::task::{Context, Poll};

/// Busy passes in a row before a driver yields to other tasks, so a flood
/// on one source cannot starve the rest of the runtime.
const MAX_PASSES: usize = 16;

/// What one pass over a driver's sources found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Something was done: pass again.
    Busy,
    /// Nothing to do: every source has registered its wake-up.
    Idle,
    /// The driver has finished.
    Done,
}

impl Pass {
    /// [`Pass::Busy`] if anything was done, else [`Pass::Idle`].
    pub(crate) fn from_busy(busy: bool) -> Pass {
        if busy { Pass::Busy } else { Pass::Idle }
    }
}

/// Runs `pass` until it is idle (`Pending`: a source will wake the task)
/// or done (`Ready`). After [`MAX_PASSES`] busy passes the task wakes
/// itself and yields, and comes straight back.
pub(crate) fn poll_passes(
    cx: &mut Context<'_>,
    mut pass: impl FnMut(&mut Context<'_>) -> Pass,
) -> Poll<()> {
    for _ in 0..MAX_PASSES {
        match pass(cx) {
            Pass::Busy => {}
            Pass::Idle => return Poll::Pending,
            Pass::Done => return Poll::Ready(()),
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}
