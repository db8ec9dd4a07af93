//! `wormhole pair-demo`: two pair agents on loopback, one process, every
//! step of a pair's life over real sockets.
//!
//! Keepalive runs, the pair is taken, its own UDP socket carries a QUIC
//! connection with data both ways, then it is released and keepalive runs
//! again on the same socket. The same code runs on every shell.

use crate::{AgentConfig, AgentEvent, PairAgent, PairLease, Shell, timeout, wait_for};
use anyhow::{Context as _, Result, bail, ensure};
use core::net::{Ipv4Addr, SocketAddr};
use std::io::Write;
use std::time::Duration;
use wormhole_core::pair::{EndpointPair, PairConfig, PairKey, PairNonce, PairState, PingRole};

/// Options of `pair-demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct PairDemoArgs {
    /// MiB to send each way over the QUIC connection on the pair.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    pub mib: u64,
    /// Keepalive ping interval in milliseconds. The real default is 10 s;
    /// the demo pings faster so it finishes in seconds.
    #[arg(long, default_value_t = 100, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub ping_ms: u64,
    /// Keepalive frames each side must accept before the handover, and
    /// again after the release.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub frames: u64,
    /// Give up on any one step after this many seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub step_timeout: u64,
}

impl Default for PairDemoArgs {
    fn default() -> Self {
        PairDemoArgs {
            mib: 16,
            ping_ms: 100,
            frames: 3,
            step_timeout: 30,
        }
    }
}

/// A [`PairConfig`] for demos and tests: keepalive at `ping`, everything
/// else scaled to stay correct.
///
/// The silence before expiry stays above 3 s whatever the ping: after the
/// peer releases a pair, the pool resumes keepalive at once while the shell
/// may still need up to 2 s to take the socket back from a draining QUIC
/// endpoint, and pings in that window do not arrive.
pub fn quick_pair_config(ping: Duration) -> PairConfig {
    let idle = (ping * 30).max(Duration::from_secs(3));
    PairConfig {
        ping_interval: ping,
        idle_timeout: idle,
        drain_timeout: (ping * 4).max(Duration::from_millis(200)),
        give_up_timeout: idle,
        ..PairConfig::default()
    }
}

/// Random bytes from the OS (pair nonces and keys).
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out)
        .map_err(|_| anyhow::anyhow!("no randomness available from the operating system"))?;
    Ok(out)
}

/// Writes `len` bytes of a pattern named by `seed` to `send`, finishes the
/// stream, and returns the pattern's BLAKE3 hash.
pub async fn send_pattern(
    send: &mut quinn::SendStream,
    seed: u8,
    len: u64,
) -> Result<blake3::Hash> {
    let mut xof = blake3::Hasher::new_keyed(&[seed; 32]).finalize_xof();
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        xof.fill(&mut chunk[..n]);
        hasher.update(&chunk[..n]);
        send.write_all(&chunk[..n]).await.context("QUIC write")?;
        left -= n as u64;
    }
    send.finish().context("QUIC finish")?;
    Ok(hasher.finalize())
}

/// Reads `recv` to its end; returns the BLAKE3 hash and length of what
/// arrived.
pub async fn hash_stream(recv: &mut quinn::RecvStream) -> Result<(blake3::Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    while let Some(chunk) = recv
        .read_chunk(usize::MAX, true)
        .await
        .context("QUIC read")?
    {
        hasher.update(&chunk.bytes);
        len += chunk.bytes.len() as u64;
    }
    Ok((hasher.finalize(), len))
}

/// What one exchange moved and whether it arrived intact.
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    /// Bytes each way.
    pub len: u64,
    /// Hash of what the initiator sent, and of what the responder got.
    pub to_responder: (blake3::Hash, blake3::Hash),
    /// Hash of what the responder sent, and of what the initiator got.
    pub to_initiator: (blake3::Hash, blake3::Hash),
    /// How long it took.
    pub elapsed: Duration,
}

impl Exchange {
    /// Whether both directions arrived complete and unchanged.
    pub fn intact(&self) -> bool {
        self.to_responder.0 == self.to_responder.1 && self.to_initiator.0 == self.to_initiator.1
    }
}

/// Connects the two leases of one pair (the initiator connects, the
/// responder accepts), sends `len` bytes each way over one bidirectional
/// stream, and closes the connection.
pub async fn exchange(
    runtime: &dyn quinn::Runtime,
    initiator: &PairLease,
    responder: &PairLease,
    len: u64,
) -> Result<Exchange> {
    let start = runtime.now();
    let (a, b) = futures_lite::future::zip(initiator.connect(), responder.accept()).await;
    let (a, b) = (
        a.context("initiator connect")?,
        b.context("responder accept")?,
    );
    let side_a = async {
        let (mut send, mut recv) = a.open_bi().await.context("open stream")?;
        let (sent, got) =
            futures_lite::future::zip(send_pattern(&mut send, 0xa1, len), hash_stream(&mut recv))
                .await;
        Ok::<_, anyhow::Error>((sent?, got?))
    };
    let side_b = async {
        let (mut send, mut recv) = b.accept_bi().await.context("accept stream")?;
        let (sent, got) =
            futures_lite::future::zip(send_pattern(&mut send, 0xb2, len), hash_stream(&mut recv))
                .await;
        Ok::<_, anyhow::Error>((sent?, got?))
    };
    let (ra, rb) = futures_lite::future::zip(side_a, side_b).await;
    let ((a_sent, (a_got, a_len)), (b_sent, (b_got, b_len))) = (ra?, rb?);
    ensure!(
        a_len == len && b_len == len,
        "short read: {a_len} and {b_len} of {len} bytes"
    );
    a.close(0u32.into(), b"done");
    Ok(Exchange {
        len,
        to_responder: (a_sent, b_got),
        to_initiator: (b_sent, a_got),
        elapsed: runtime.now().saturating_duration_since(start),
    })
}

/// Frames an agent has accepted on a pair so far.
pub async fn frames_accepted(agent: &PairAgent, pair: PairNonce) -> Result<u64> {
    let stats = agent.stats().await?;
    Ok(stats
        .pair(pair)
        .with_context(|| format!("pair {pair:?} is gone"))?
        .stats
        .frames_accepted)
}

/// Runs the demo, printing progress lines to `out`.
pub fn run<S: Shell>(shell: &S, args: &PairDemoArgs, out: &mut dyn Write) -> Result<()> {
    shell.block_on(run_async(shell, args, out))
}

async fn run_async<S: Shell>(shell: &S, args: &PairDemoArgs, out: &mut dyn Write) -> Result<()> {
    let rt = shell.runtime();
    let rt = &*rt;
    let step = Duration::from_secs(args.step_timeout);
    let poll = Duration::from_millis(10);
    let cfg = quick_pair_config(Duration::from_millis(args.ping_ms));
    writeln!(
        out,
        "pair-demo on {}: two pair agents on loopback",
        shell.name()
    )?;

    let a_cfg = AgentConfig::new(crate::Identity::generate()?, cfg.clone())?;
    let b_cfg = AgentConfig::new(crate::Identity::generate()?, cfg)?;
    let (a_fp, b_fp) = (a_cfg.identity.fingerprint(), b_cfg.identity.fingerprint());
    let a = PairAgent::spawn(shell.runtime(), a_cfg);
    let b = PairAgent::spawn(shell.runtime(), b_cfg);
    writeln!(out, "  agent A {:?} (certificate {a_fp:?})", a.id())?;
    writeln!(out, "  agent B {:?} (certificate {b_fp:?})", b.id())?;

    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (sa, sb) = timeout(
        rt,
        step,
        "the signalling connection",
        shell.tcp_loopback_pair(loopback),
    )
    .await?
    .context("signalling connection on loopback")?;
    a.add_peer(b.id(), b_fp, sa).await?;
    b.add_peer(a.id(), a_fp, sb).await?;
    writeln!(
        out,
        "[1/6] signalling: one TCP connection on loopback between A and B"
    )?;

    let ua = shell.bind_udp(loopback).context("bind A's UDP socket")?;
    let ub = shell.bind_udp(loopback).context("bind B's UDP socket")?;
    let (a_addr, b_addr) = (ua.local_addr()?, ub.local_addr()?);
    let nonce = PairNonce(u64::from_le_bytes(random_bytes()?).max(1));
    let key = PairKey(random_bytes()?);
    let pair = |local, remote, peer, role| EndpointPair {
        nonce,
        local,
        remote,
        peer,
        key: key.clone(),
        role,
    };
    a.add_pair(pair(a_addr, b_addr, b.id(), PingRole::Pinger), ua)
        .await?;
    b.add_pair(pair(b_addr, a_addr, a.id(), PingRole::Ponger), ub)
        .await?;
    writeln!(
        out,
        "[2/6] pair {nonce:?}: A {a_addr} (pinger) <-> B {b_addr} (ponger)"
    )?;

    let want = args.frames;
    for (name, agent) in [("A", &a), ("B", &b)] {
        wait_for(
            rt,
            step,
            poll,
            format!("{want} keepalive frames at {name}"),
            || async {
                frames_accepted(agent, nonce)
                    .await
                    .ok()
                    .filter(|&n| n >= want)
            },
        )
        .await?;
    }
    let (fa, fb) = (
        frames_accepted(&a, nonce).await?,
        frames_accepted(&b, nonce).await?,
    );
    writeln!(
        out,
        "[3/6] keepalive: A accepted {fa} authenticated pongs, B accepted {fb} pings"
    )?;

    let lease_a = timeout(rt, step, "the take to finish", a.take(b.id()))
        .await?
        .context("take")?;
    let lease_b = timeout(
        rt,
        step,
        "B's Taken event",
        b.wait_event(|e| match e {
            AgentEvent::Taken(lease) if lease.pair == nonce => Some(lease.clone()),
            _ => None,
        }),
    )
    .await??;
    for (name, lease, addr) in [("A", &lease_a, a_addr), ("B", &lease_b, b_addr)] {
        let bound = lease.endpoint.local_addr()?;
        if bound != addr {
            bail!("{name}'s QUIC endpoint is on {bound}, not on the pair's socket {addr}");
        }
    }
    writeln!(
        out,
        "[4/6] handover: A took the pair, both sides Taken; QUIC endpoints on the pair's own sockets {a_addr} and {b_addr}"
    )?;

    let len = args.mib * 1024 * 1024;
    let x = timeout(
        rt,
        step,
        "the QUIC transfer",
        exchange(rt, &lease_a, &lease_b, len),
    )
    .await??;
    ensure!(x.intact(), "data corrupted in transit: {x:?}");
    let secs = x.elapsed.as_secs_f64();
    writeln!(
        out,
        "[5/6] QUIC: {} MiB A->B and {} MiB B->A in {secs:.2} s ({:.0} MiB/s each way), BLAKE3 hashes match",
        args.mib,
        args.mib,
        args.mib as f64 / secs.max(1e-9)
    )?;
    drop((lease_a, lease_b));

    timeout(rt, step, "A's release", a.release(nonce)).await??;
    timeout(
        rt,
        step,
        "B's Released event",
        b.wait_event(|e| match e {
            AgentEvent::Released { pair, .. } if *pair == nonce => Some(()),
            _ => None,
        }),
    )
    .await??;
    let (ba, bb) = (
        frames_accepted(&a, nonce).await?,
        frames_accepted(&b, nonce).await?,
    );
    for (name, agent, base) in [("A", &a, ba), ("B", &b, bb)] {
        wait_for(
            rt,
            step,
            poll,
            format!("keepalive to resume at {name}"),
            || async {
                frames_accepted(agent, nonce)
                    .await
                    .ok()
                    .filter(|&n| n >= base + want)
            },
        )
        .await?;
    }
    for (name, agent, addr) in [("A", &a, a_addr), ("B", &b, b_addr)] {
        let stats = agent.stats().await?;
        let status = stats.pair(nonce).context("pair gone after release")?;
        ensure!(
            status.state == PairState::Idle && !status.with_quic && status.bound == Some(addr),
            "{name}: pair not back in keepalive on {addr}: {status:?}"
        );
    }
    let (ra, rb) = (
        frames_accepted(&a, nonce).await?,
        frames_accepted(&b, nonce).await?,
    );
    writeln!(
        out,
        "[6/6] release: pair Idle on both sides; keepalive resumed on the same sockets (A +{}, B +{} frames)",
        ra - ba,
        rb - bb
    )?;
    writeln!(out, "ok")?;
    Ok(())
}
