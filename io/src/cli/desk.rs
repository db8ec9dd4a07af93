//! The spare desk: a mount that keeps spare paths to a host hands one to
//! a second mount of the same host on this machine (another process), so
//! that mount connects without gathering or punching. The punched socket
//! itself crosses over (SCM_RIGHTS on a Unix socket): its NAT mapping is
//! the path, and the host serves whoever speaks QUIC on it.
//!
//! The desk is a Unix socket named by the host's fingerprint in a
//! directory only this user can enter (`$XDG_RUNTIME_DIR`, else the
//! temporary directory, `wormhole-UID`, mode 0700), and it answers only
//! peers of the same user (or root). One request, one answer:
//! `spare\n` → `ok REMOTE BIRTHDAY\n` with the socket attached, or
//! `none\n`.

use super::commands::PunchedPath;
use core::net::SocketAddr;
use std::io::{self, BufRead, Read as _, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a second mount waits for the desk's answer: taking a spare
/// is two round trips through the rendezvous.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// A spare handed over from another mount: the socket and where the
/// host is on it.
pub(super) struct Handed {
    pub(super) socket: std::net::UdpSocket,
    pub(super) remote: SocketAddr,
    pub(super) birthday: bool,
}

/// The desk's path for the host with `fingerprint`, its directory made
/// (private to this user) if need be; `None` if that directory is not
/// ours alone.
fn desk_path(fingerprint: &[u8; 32]) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let uid = rustix::process::getuid().as_raw();
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("wormhole-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    let private = meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0;
    if !private {
        tracing::debug!(dir = %dir.display(), "no spare desk: the directory is not private");
        return None;
    }
    let name: String = fingerprint[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(dir.join(format!("spares-{name}.sock")))
}

/// Whether the peer on `stream` runs as this user (or root).
fn same_user(stream: &UnixStream) -> bool {
    let uid = rustix::process::getuid();
    rustix::net::sockopt::socket_peercred(stream.as_fd())
        .is_ok_and(|cred| cred.uid == uid || cred.uid.is_root())
}

/// A desk open for requests.
pub(super) struct Desk {
    path: PathBuf,
    listener: UnixListener,
}

/// The desk's socket file, removed when the mount that serves it ends.
pub(super) struct DeskFile(PathBuf);

impl Drop for DeskFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Desk {
    /// Opens the desk for the host with `fingerprint`, unless another
    /// mount of it keeps one already (or there is no private directory).
    pub(super) fn open(fingerprint: &[u8; 32]) -> Option<Desk> {
        let path = desk_path(fingerprint)?;
        if UnixStream::connect(&path).is_ok() {
            return None;
        }
        // A file left by a mount that is gone.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).ok()?;
        Some(Desk { path, listener })
    }

    /// Serves requests on a thread of its own for as long as `requests`
    /// is read: each is passed there with a place for the answer (a
    /// spare, or `None`), which the mount's async side fills. The socket
    /// file goes with the returned guard.
    pub(super) fn serve(
        self,
        requests: async_channel::Sender<async_channel::Sender<Option<PunchedPath>>>,
    ) -> DeskFile {
        let file = DeskFile(self.path.clone());
        std::thread::Builder::new()
            .name("wormhole-spare-desk".into())
            .spawn(move || {
                for stream in self.listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    if requests.is_closed() {
                        return;
                    }
                    if let Err(e) = answer(stream, &requests) {
                        tracing::debug!(error = %e, "a spare desk request failed");
                    }
                }
            })
            .map(drop)
            .unwrap_or_else(|e| tracing::warn!(error = %e, "no spare desk"));
        file
    }
}

fn answer(
    stream: UnixStream,
    requests: &async_channel::Sender<async_channel::Sender<Option<PunchedPath>>>,
) -> io::Result<()> {
    if !same_user(&stream) {
        return Err(io::Error::other("a request from another user"));
    }
    stream.set_read_timeout(Some(ANSWER_LIMIT))?;
    let mut line = String::new();
    io::BufReader::new(&stream).take(64).read_line(&mut line)?;
    if line != "spare\n" {
        return Err(io::Error::other(format!("not a request: {line:?}")));
    }
    let (tx, rx) = async_channel::bounded(1);
    requests
        .send_blocking(tx)
        .map_err(|_| io::Error::other("the mount is gone"))?;
    let spare = rx.recv_blocking().ok().flatten();
    let mut stream = stream;
    let Some(spare) = spare else {
        return stream.write_all(b"none\n");
    };
    let text = format!("ok {} {}\n", spare.remote, u8::from(spare.birthday));
    let socket = spare.punched.socket;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    let fds = [socket.as_fd()];
    control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        &stream,
        &[io::IoSlice::new(text.as_bytes())],
        &mut control,
        rustix::net::SendFlags::empty(),
    )?;
    Ok(())
}

/// Asks the desk of a mount of the host with `fingerprint` on this machine
/// for one of its spares. `None` when there is no such mount, it has no
/// spare ready, or anything goes wrong (the caller punches for itself).
pub(super) fn ask(fingerprint: &[u8; 32]) -> Option<Handed> {
    let path = desk_path(fingerprint)?;
    ask_at(&path)
        .inspect_err(|e| tracing::debug!(error = %e, "no spare from another mount"))
        .ok()
        .flatten()
}

fn ask_at(path: &Path) -> io::Result<Option<Handed>> {
    let mut stream = UnixStream::connect(path)?;
    if !same_user(&stream) {
        return Err(io::Error::other("the desk runs as another user"));
    }
    stream.set_read_timeout(Some(ANSWER_LIMIT))?;
    stream.write_all(b"spare\n")?;
    let mut buf = [0u8; 128];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [io::IoSliceMut::new(&mut buf)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for message in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = message {
            fd = fd.or(fds.next());
        }
    }
    let text = std::str::from_utf8(&buf[..got.bytes]).map_err(io::Error::other)?;
    let mut words = text.trim_end().split(' ');
    match (words.next(), words.next(), words.next(), fd) {
        (Some("none"), ..) => Ok(None),
        (Some("ok"), Some(remote), Some(birthday), Some(fd)) => {
            let remote = remote.parse().map_err(io::Error::other)?;
            let socket = std::net::UdpSocket::from(fd);
            Ok(Some(Handed {
                socket,
                remote,
                birthday: birthday == "1",
            }))
        }
        _ => Err(io::Error::other(format!("a strange answer: {text:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A desk on `path` answering one request with `spare`.
    fn desk_answering(path: &Path, spare: Option<PunchedPath>) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(path).expect("bind the desk");
        let (requests, asked) = async_channel::bounded(1);
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("a request");
            let mount = std::thread::spawn(move || {
                let reply: async_channel::Sender<Option<PunchedPath>> = asked
                    .recv_blocking()
                    .expect("the request reaches the mount");
                reply.send_blocking(spare).expect("answered");
            });
            answer(stream, &requests).expect("the answer goes out");
            mount.join().expect("the mount side");
        })
    }

    /// The very socket crosses over: the one received is bound where the
    /// spare's was, with the host's address beside it.
    #[test]
    fn a_spare_socket_is_handed_over_to_the_asker() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("desk.sock");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket");
        let bound = socket.local_addr().expect("its address");
        let remote: SocketAddr = "192.0.2.7:4242".parse().expect("an address");
        let spare = PunchedPath {
            punched: crate::nat::Punched {
                socket,
                relay: None,
            },
            remote,
            birthday: true,
        };
        let desk = desk_answering(&path, Some(spare));
        let handed = ask_at(&path).expect("asked").expect("a spare");
        desk.join().expect("the desk");
        assert_eq!(handed.socket.local_addr().expect("bound"), bound);
        assert_eq!(handed.remote, remote);
        assert!(handed.birthday);
    }

    /// A desk with no spare ready says so, and nothing crosses.
    #[test]
    fn a_desk_without_a_spare_says_none() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("desk.sock");
        let desk = desk_answering(&path, None);
        assert!(ask_at(&path).expect("asked").is_none());
        desk.join().expect("the desk");
    }
}
