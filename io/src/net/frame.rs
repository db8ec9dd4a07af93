//! Frames on QUIC streams: one length-prefixed message
//! ([`wormhole_core::codec::frame`]) per stream, written from its pieces
//! without a copy and read with a size limit.

use bytes::Bytes;
use tracing::trace;
use wormhole_core::codec::{FRAME_HEADER_LEN, Pieces, WireMessage, frame_header};
use wormhole_core::proto::{ClientMessage, HostMessage};

use crate::net::quic::BAD_FRAME;

/// Largest request frame a host reads from a stream.
pub const MAX_REQUEST_FRAME: usize = FRAME_HEADER_LEN + <ClientMessage as WireMessage>::MAX_SIZE;
/// Largest reply or push frame a client reads from a stream.
pub const MAX_HOST_FRAME: usize = FRAME_HEADER_LEN + <HostMessage as WireMessage>::MAX_SIZE;

/// Writes `payload` as one frame: its length, then the payload's pieces,
/// handed to quinn as they are (a copy into a framed buffer and quinn's
/// own copy of a borrowed slice would each move a chunk's bytes once
/// more).
pub(crate) async fn write_frame(
    send: &mut quinn::SendStream,
    payload: Pieces,
) -> Result<(), quinn::WriteError> {
    let header = Bytes::copy_from_slice(&frame_header(payload.len()));
    let mut chunks: Vec<Bytes> = std::iter::once(header).chain(payload.into_vec()).collect();
    send.write_all_chunks(&mut chunks).await
}

/// Reads one stream to its end as one frame of at most `max` bytes,
/// header included, and returns its payload. A stream holding anything
/// else (a short header, a payload shorter or longer than its header
/// says, a frame beyond `max`) is stopped.
pub(crate) async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Option<Bytes> {
    match read_whole_frame(recv, max).await {
        Ok(payload) => Some(payload),
        Err(FrameRead::Bad) => {
            let _ = recv.stop(BAD_FRAME);
            None
        }
        Err(FrameRead::Lost(e)) => {
            trace!(error = %e, "stream read failed");
            None
        }
    }
}

/// Why a stream held no frame.
enum FrameRead {
    /// The peer sent something that is not one frame.
    Bad,
    /// The stream or connection broke.
    Lost(quinn::ReadError),
}

async fn read_whole_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Bytes, FrameRead> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => FrameRead::Bad,
        quinn::ReadExactError::ReadError(e) => FrameRead::Lost(e),
    })?;
    let len = usize::try_from(u32::from_be_bytes(header)).map_err(|_| FrameRead::Bad)?;
    if len > max.saturating_sub(FRAME_HEADER_LEN) {
        return Err(FrameRead::Bad);
    }
    // The payload arrives as one piece per QUIC packet. They are kept as
    // they come and joined once at the end (into a recycled buffer, no
    // zeroing and no regrowth, which quinn's `read_to_end` does both), and
    // no memory is promised to a length the peer has not yet sent.
    let mut pieces = Vec::new();
    let mut got = 0;
    while got < len {
        match recv.read_chunk(len - got, true).await {
            Ok(Some(chunk)) => {
                got += chunk.bytes.len();
                pieces.push(chunk.bytes);
            }
            Ok(None) => return Err(FrameRead::Bad),
            Err(e) => return Err(FrameRead::Lost(e)),
        }
    }
    // The frame must fill the stream exactly.
    match recv.read_chunk(1, true).await {
        Ok(None) => {}
        Ok(Some(_)) => return Err(FrameRead::Bad),
        Err(e) => return Err(FrameRead::Lost(e)),
    }
    Ok(crate::recycle::join(pieces, len))
}
