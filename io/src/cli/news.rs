//! What `wormhole host` and `wormhole mount` tell the person running
//! them while they run: a line per change, in words, on standard output
//! (logs, for the curious, go to stderr through `tracing`).

use std::io::Write;

use wormhole_core::client::ClientEvent;
use wormhole_core::conn::DisconnectReason;
use wormhole_core::host::HostEvent;
use wormhole_core::proto::Errno;

/// Tells the person running `mount` what happens to the connection, a
/// line per change (and each of `lines`, news from elsewhere in the
/// mount), until the mount's driver ends.
pub(crate) async fn tell_connection_news(
    events: &async_channel::Receiver<ClientEvent>,
    lines: &async_channel::Receiver<String>,
    out: &mut dyn Write,
) {
    // The first connect is the mount itself ("Mounted at" said so).
    let mut connected_before = false;
    let mut last = String::new();
    loop {
        let event = async { events.recv().await.map(Ok).ok() };
        let line = async {
            match lines.recv().await {
                Ok(line) => Some(Err(line)),
                // Nobody else has news: only the events are left.
                Err(_) => core::future::pending().await,
            }
        };
        let line = match futures_lite::future::or(event, line).await {
            None => break,
            Some(Err(line)) => line,
            Some(Ok(event)) => {
                let first = !connected_before;
                connected_before |= matches!(event, ClientEvent::Connected { .. });
                match connection_news(&event, first) {
                    Some(line) => line,
                    None => continue,
                }
            }
        };
        // A host that stays away fails every redial the same way.
        if line != last {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            last = line;
        }
    }
}

/// The line a person is told about `event`; `None` when there is nothing
/// to say. `first`: no connection has been made yet.
fn connection_news(event: &ClientEvent, first: bool) -> Option<String> {
    Some(match *event {
        ClientEvent::Connected { .. } if first => return None,
        ClientEvent::Connected { resumed: true } => {
            "Reconnected to the host; the session was resumed.".to_owned()
        }
        ClientEvent::Connected { resumed: false } => {
            "Reconnected to the host (a new session).".to_owned()
        }
        // Whoever moved the path says why ("Now direct …").
        ClientEvent::Moved { resumed: true } => return None,
        ClientEvent::Moved { resumed: false } => {
            "Moved to the new path to the host (a new session).".to_owned()
        }
        ClientEvent::Lost => {
            "Lost the connection to the host; reconnecting. Cached files still answer.".to_owned()
        }
        ClientEvent::Unreachable => "The host is not answering; cached files still answer, \
                                     other requests fail with ETIMEDOUT within seconds."
            .to_owned(),
        ClientEvent::Reachable => "The host answers again.".to_owned(),
        ClientEvent::CreateLost { ref name, errno } => format!(
            "The host refused the new file {:?} ({errno}) after it was closed: it is not \
             there. A program on the host may have made that name meanwhile, or its disk is full.",
            String::from_utf8_lossy(name.as_bytes())
        ),
        ClientEvent::RemoveLost { ref name, errno } => format!(
            "The host did not remove {:?} ({errno}) after the mount said it had: the name may \
             still be there. Another client may hold a lock on it, or the host restarted.",
            String::from_utf8_lossy(name.as_bytes())
        ),
        ClientEvent::AttrLost { ref name, errno } => format!(
            "The host did not set the mode or times of {} ({errno}) after the mount said it \
             had. Another client may hold a lock on it, or the host restarted.",
            name.as_ref()
                .map_or("the shared folder".to_owned(), |n| format!(
                    "the directory {:?}",
                    String::from_utf8_lossy(n.as_bytes())
                ))
        ),
        ClientEvent::Retrying { attempt, delay } => {
            format!(
                "Reconnect attempt {attempt} in {:.1} s.",
                delay.as_secs_f64()
            )
        }
        ClientEvent::Disconnected {
            reason: DisconnectReason::Requested,
            ..
        } => return None,
        ClientEvent::Disconnected {
            reason,
            redial_in: Some(every),
        } => format!(
            "Cannot reach the host ({reason}); trying again every {} s, and at once when a \
             file is wanted. Meanwhile cached files answer; the rest fails.",
            every.as_secs()
        ),
        ClientEvent::Disconnected {
            reason,
            redial_in: None,
        } => format!(
            "Disconnected: {reason}. Files fail with ENOTCONN; unmount, and mount again with a \
             current ticket."
        ),
    })
}

/// Tells the person running `host` who comes and goes, a line each, and
/// writes the other lines it is given (`lines`: news from the rendezvous
/// side); returns why the host stopped if it stopped by itself (the shared
/// folder could not be read).
pub(crate) async fn tell_host_news(
    events: &async_channel::Receiver<HostEvent>,
    lines: &async_channel::Receiver<String>,
    out: &mut dyn Write,
) -> Option<Errno> {
    let mut sessions = 0usize;
    loop {
        let next = futures_lite::future::or(async { events.recv().await.map(Ok) }, async {
            match lines.recv().await {
                Ok(line) => Ok(Err(line)),
                // Nobody sends lines (no rendezvous): events only.
                Err(_) => core::future::pending().await,
            }
        })
        .await;
        let line = match next {
            // The host's driver is gone; only Ctrl-C is left to wait for.
            Err(_) => break,
            Ok(Ok(HostEvent::ScanFailed(errno))) => return Some(errno),
            Ok(Ok(event)) => host_news(&event, &mut sessions),
            Ok(Err(line)) => Some(line),
        };
        if let Some(line) = line {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
    core::future::pending().await
}

/// The line a person is told about `event`, keeping `sessions` (clients
/// the host holds a session for) up to date; `None`: nothing to say.
fn host_news(event: &HostEvent, sessions: &mut usize) -> Option<String> {
    let count = |n: usize| match n {
        1 => "1 client".to_owned(),
        n => format!("{n} clients"),
    };
    match *event {
        HostEvent::Authenticated { resumed: true, .. } => {
            Some("A client reconnected and resumed its session.".to_owned())
        }
        HostEvent::Authenticated { resumed: false, .. } => {
            *sessions += 1;
            Some(format!("A client connected ({} now).", count(*sessions)))
        }
        HostEvent::AuthRefused { .. } => {
            Some("Refused a client: it does not know the ticket's secret.".to_owned())
        }
        HostEvent::SessionEnded { .. } => {
            *sessions = sessions.saturating_sub(1);
            Some(format!(
                "A client left; its locks and open files are released ({} now).",
                count(*sessions)
            ))
        }
        HostEvent::State(_) | HostEvent::ScanFailed(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_news_is_one_line_per_change() {
        use std::time::Duration;
        let first = ClientEvent::Connected { resumed: false };
        assert_eq!(connection_news(&first, true), None, "the mount said it");
        assert!(
            connection_news(&ClientEvent::Unreachable, false)
                .is_some_and(|l| l.starts_with("The host is not answering")),
        );
        assert_eq!(
            connection_news(&ClientEvent::Reachable, false).as_deref(),
            Some("The host answers again.")
        );
        let lines: Vec<String> = [
            ClientEvent::Lost,
            ClientEvent::Retrying {
                attempt: 2,
                delay: Duration::from_millis(2150),
            },
            ClientEvent::Disconnected {
                reason: DisconnectReason::RetriesExhausted,
                redial_in: Some(Duration::from_secs(30)),
            },
            ClientEvent::Connected { resumed: true },
            ClientEvent::Connected { resumed: false },
            ClientEvent::Disconnected {
                reason: DisconnectReason::AuthFailed,
                redial_in: None,
            },
        ]
        .iter()
        .map(|e| connection_news(e, false).expect("news"))
        .collect();
        assert!(lines[0].starts_with("Lost the connection"), "{}", lines[0]);
        assert_eq!(lines[1], "Reconnect attempt 2 in 2.1 s.");
        assert!(
            lines[2].contains("every reconnect attempt failed")
                && lines[2].contains("every 30 s")
                && lines[2].contains("cached files answer"),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains("resumed"), "{}", lines[3]);
        assert!(lines[4].contains("new session"), "{}", lines[4]);
        assert!(
            lines[5].contains("refused the ticket's secret") && lines[5].contains("mount again"),
            "{}",
            lines[5]
        );
        assert!(lines.iter().all(|l| !l.contains('\n')));
        let ours = ClientEvent::Disconnected {
            reason: DisconnectReason::Requested,
            redial_in: None,
        };
        assert_eq!(connection_news(&ours, false), None, "our own unmount");
    }

    #[test]
    fn host_news_counts_the_clients() {
        use wormhole_core::host::ConnId;
        use wormhole_core::proto::SessionId;
        let mut n = 0;
        let joined = |s: u8| HostEvent::Authenticated {
            conn: ConnId(u64::from(s)),
            session: SessionId([s; 16]),
            resumed: false,
        };
        let news = |e: HostEvent, n: &mut usize| host_news(&e, n).expect("news");
        assert_eq!(
            news(joined(1), &mut n),
            "A client connected (1 client now)."
        );
        assert_eq!(
            news(joined(2), &mut n),
            "A client connected (2 clients now)."
        );
        let back = HostEvent::Authenticated {
            conn: ConnId(3),
            session: SessionId([1; 16]),
            resumed: true,
        };
        assert!(news(back, &mut n).contains("resumed"));
        assert_eq!(n, 2, "a resumed session is not a new client");
        let left = HostEvent::SessionEnded {
            session: SessionId([2; 16]),
        };
        assert!(news(left, &mut n).ends_with("(1 client now)."));
        let refused = HostEvent::AuthRefused { conn: ConnId(4) };
        assert!(news(refused, &mut n).contains("secret"));
        assert_eq!(n, 1);
    }
}
