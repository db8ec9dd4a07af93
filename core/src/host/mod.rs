//! The host (docs/filesystem.md, "Host session"): the session lifecycle and the host side of the file
//! protocol. Every decision about a file operation is made here, inside the
//! core; the shell only executes [`FsOp`]s beneath the shared root.
//!
//! ```text
//! Stopped ─start─► Scanning ─scan complete─► Listening ─client─► Hosting
//!    ▲                │ scan error              │ stop             │ last client gone
//!    └────────────────┴─────────────────────────┴──── stop ◄──── Idle ◄┘
//!                                                  (client ─► Hosting)
//! ```
//!
//! * **Scanning** builds the file index (node ids ↔ paths) breadth-first
//!   through batched `List` operations, up to a bound; anything beyond is
//!   indexed on demand by lookups.
//! * **Confinement**: requests name nodes and [`crate::proto::Name`]s, never
//!   paths; a `Name` cannot be `..`, contain `/` or NUL, so every path the
//!   host builds is beneath the root by construction. Names starting with
//!   [`RESERVED_PREFIX`] (the host's staging files) are invisible to
//!   clients. The shell executes every [`FsOp`] with no-follow,
//!   beneath-root system calls.
//! * **Authentication**: a connection must open with a Hello whose proof
//!   matches the ticket secret and this TLS session; anything else gets
//!   EACCES and the connection is closed.
//! * **Writes** are transactions: staged beside the file, fenced by the
//!   exclusive lock's token at every step, committed by fsync + rename, so
//!   a crash leaves the old or the new content, never a mix.

mod fsop;
pub mod memfs;
mod nodes;
mod pump;
mod server;
#[cfg(test)]
mod tests;

pub use fsop::{
    BatchOp, FileStamp, FsAttr, FsHandle, FsOk, FsOp, FsOpId, FsResult, LockHolder, NewFile,
    OpenAs, ReadFrom, RelPath, split_dirs, with_dirs,
};
pub use nodes::NodeTable;
pub use pump::HostIo;
pub use server::{
    ConnId, HostConfig, HostEvent, HostOutput, HostServer, HostState, RESERVED_PREFIX,
};
