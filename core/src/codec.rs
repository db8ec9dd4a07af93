//! The wire encoding: the one place that knows how messages become bytes.
//!
//! Every message is one protocol-version byte followed by its
//! [bincode](https://docs.rs/bincode) (serde) encoding. Every decode is
//! bounded twice: the input may not exceed the message type's
//! [`WireMessage::MAX_SIZE`], and bincode's own limit stops a forged length
//! prefix from allocating more than that. Trailing bytes are an error, so
//! one encoding maps to one value.
//!
//! Swapping the encoding (bincode is no longer maintained) touches only this
//! module; the wire snapshots in the tests show any change.
//!
//! For byte streams (the signalling channel), [`FrameDecoder`] splits a
//! stream into length-prefixed frames with a hard size limit.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Version of the wire protocol; the first byte of every encoded message.
pub const PROTOCOL_VERSION: u8 = 14;

/// The largest message any decoder accepts, whatever its type (above
/// every type's own limit: a write piece and its envelope, a page of a
/// listing).
pub const MAX_MESSAGE_SIZE: usize = 2 << 20;

/// A message type that can cross the wire.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// The largest accepted encoding of this message, version byte included.
    const MAX_SIZE: usize;
}

/// Why bytes could not be turned into a message (or back).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {got} (this build speaks {PROTOCOL_VERSION})")]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// The message exceeds its type's size limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size of the offending message.
        len: usize,
        /// The limit for its type.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A valid message was followed by extra bytes.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_SIZE>()
}

/// Encodes `msg` as version byte + bincode.
///
/// Fails only if the encoding exceeds the type's size limit, which for the
/// fixed-size messages of the core cannot happen.
pub fn encode<M: WireMessage>(msg: &M) -> Result<Bytes, CodecError> {
    // Sized first, so the buffer is allocated once: grown from a guess,
    // a 128 KiB chunk's message was copied a dozen times on the way.
    // Counting costs a walk of the message, not of its bytes.
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(msg, &mut size, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    let len = 1 + size.bytes_written;
    if len > M::MAX_SIZE {
        return Err(CodecError::TooLarge {
            len,
            max: M::MAX_SIZE,
        });
    }
    let mut out = Vec::with_capacity(len);
    out.push(PROTOCOL_VERSION);
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// An encoded message in the pieces it is sent as: what the encoder wrote,
/// with the bytes of each [`shared`] field (file data) in between as they
/// are, not copied. Joined, the pieces are exactly [`encode`]'s bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pieces(Vec<Bytes>);

impl Pieces {
    /// Length of the whole encoding.
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    /// Whether the encoding is empty (no message encodes so).
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Bytes::is_empty)
    }

    /// The pieces, in order.
    pub fn into_vec(self) -> Vec<Bytes> {
        self.0
    }

    /// The pieces joined into one buffer of the exact size (a copy, unless
    /// there is one piece).
    pub fn join(self) -> Bytes {
        match <[Bytes; 1]>::try_from(self.0) {
            Ok([one]) => one,
            Err(pieces) => Bytes::from(pieces.concat()),
        }
    }
}

impl From<Vec<Bytes>> for Pieces {
    fn from(pieces: Vec<Bytes>) -> Self {
        Pieces(pieces)
    }
}

/// [`encode`], but a [`shared`] field's bytes are not copied into the
/// encoding: they become a piece of their own. For file data on its way
/// to a socket, which takes the pieces as they are.
pub fn encode_pieces<M: WireMessage>(msg: &M) -> Result<Pieces, CodecError> {
    let spliced = {
        let _splicing = Splicing::start();
        bincode::serde::encode_into_writer(msg, SpliceWriter, config())
            .map_err(|e| CodecError::Malformed(e.to_string()))?;
        SPLICE.with(|s| s.borrow_mut().take()).unwrap_or_default()
    };
    let len = spliced.out.len() + spliced.cuts.iter().map(|(_, b)| b.len()).sum::<usize>();
    if len > M::MAX_SIZE {
        return Err(CodecError::TooLarge {
            len,
            max: M::MAX_SIZE,
        });
    }
    let out = Bytes::from(spliced.out);
    let mut pieces = Vec::with_capacity(2 * spliced.cuts.len() + 1);
    let mut from = 0;
    for (at, data) in spliced.cuts {
        pieces.push(out.slice(from..at));
        pieces.push(data);
        from = at;
    }
    pieces.push(out.slice(from..));
    pieces.retain(|p| !p.is_empty());
    Ok(Pieces(pieces))
}

/// What [`encode_pieces`] has written so far, and where the bytes of each
/// [`shared`] field go in it.
struct Splice {
    out: Vec<u8>,
    cuts: Vec<(usize, Bytes)>,
}

impl Default for Splice {
    fn default() -> Self {
        Splice {
            out: vec![PROTOCOL_VERSION],
            cuts: Vec::new(),
        }
    }
}

thread_local! {
    /// The encoding [`encode_pieces`] is making: its writer and the
    /// [`shared`] fields both need it, and serde lets a field see only
    /// the serializer. Set for the one encode, then put back.
    static SPLICE: std::cell::RefCell<Option<Splice>> = const { std::cell::RefCell::new(None) };
}

/// Sets up [`SPLICE`] for one encode and puts back what was there before
/// when dropped, even on unwind.
struct Splicing(Option<Splice>);

impl Splicing {
    fn start() -> Splicing {
        Splicing(SPLICE.with(|s| s.replace(Some(Splice::default()))))
    }
}

impl Drop for Splicing {
    fn drop(&mut self) {
        let previous = self.0.take();
        SPLICE.with(|s| *s.borrow_mut() = previous);
    }
}

/// bincode's output for [`encode_pieces`]: appended to [`SPLICE`].
struct SpliceWriter;

impl bincode::enc::write::Writer for SpliceWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        SPLICE.with(|s| {
            if let Some(s) = s.borrow_mut().as_mut() {
                s.out.extend_from_slice(bytes);
            }
        });
        Ok(())
    }
}

/// Decodes one whole message; any byte left over is an error. Byte fields
/// marked [`shared`] are copied out of `bytes`; [`decode_shared`] avoids
/// that.
pub fn decode<M: WireMessage>(bytes: &[u8]) -> Result<M, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if bytes.len() > M::MAX_SIZE {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: M::MAX_SIZE,
        });
    }
    if version != PROTOCOL_VERSION {
        return Err(CodecError::Version { got: version });
    }
    // Borrowing, so that a byte field sees its bytes where they lie in the
    // input and can share them ([`shared`]).
    let (msg, used) = bincode::serde::borrow_decode_from_slice::<M, _>(body, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(msg)
}

/// [`decode`] of a received frame, whose byte fields marked
/// [`shared`] become slices of `frame` instead of copies: a chunk's
/// 128 KiB is not moved again after it arrived.
pub fn decode_shared<M: WireMessage>(frame: &Bytes) -> Result<M, CodecError> {
    let _lent = Lent::new(frame);
    decode(frame)
}

thread_local! {
    /// The frame [`decode_shared`] is decoding, for [`shared`]. A
    /// serde visitor sees a borrowed `&[u8]` and nothing of the buffer
    /// behind it; this lends it for the one decode (no I/O, nothing
    /// carried over: it is put back when the decode ends).
    static LENT: std::cell::RefCell<Option<Bytes>> = const { std::cell::RefCell::new(None) };
}

/// The frame lent to [`shared`] while it lives; it puts back what
/// was lent before (so a decode within a decode is fine), even on unwind.
struct Lent(Option<Bytes>);

impl Lent {
    fn new(frame: &Bytes) -> Lent {
        Lent(LENT.with(|l| l.replace(Some(frame.clone()))))
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let previous = self.0.take();
        LENT.with(|l| *l.borrow_mut() = previous);
    }
}

/// Serde `with` module for a message's bulk `Bytes` fields (file data),
/// which then cross the codec without a copy: [`encode_pieces`] sends them
/// as pieces of their own, and [`decode_shared`] makes them slices of the
/// received frame. Elsewhere they encode and decode as any `Bytes` (a
/// length, then the bytes), so marking a field changes nothing on the
/// wire.
pub mod shared {
    use super::{LENT, SPLICE, holds};
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    /// Encodes `data`; within [`super::encode_pieces`], only its length,
    /// and the bytes are spliced in after it.
    pub fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        if !SPLICE.with(|sp| sp.borrow().is_some()) {
            return s.serialize_bytes(data);
        }
        // A slice's length is encoded as a u64 is, so this is the prefix
        // `serialize_bytes` would write (the codec's tests check it).
        let ok = s.serialize_u64(data.len() as u64)?;
        SPLICE.with(|sp| {
            if let Some(sp) = sp.borrow_mut().as_mut() {
                sp.cuts.push((sp.out.len(), data.clone()));
            }
        });
        Ok(ok)
    }

    /// Decodes bytes; within [`super::decode_shared`], as a slice of the
    /// frame.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Bytes, E> {
                Ok(LENT.with(|l| match &*l.borrow() {
                    Some(frame) if holds(frame, v) => frame.slice_ref(v),
                    _ => Bytes::copy_from_slice(v),
                }))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

/// Whether `part` lies within `whole`'s memory (what `slice_ref` needs).
fn holds(whole: &[u8], part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    at >= start && at + part.len() <= start + whole.len()
}

/// Why a byte stream could not be split into frames.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces a frame beyond the limit; the stream
    /// cannot be resynchronised and must be closed.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The decoder's limit.
        max: usize,
    },
}

/// Length of the big-endian `u32` prefix of a stream frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// Prefixes `payload` with its length, for a byte stream.
///
/// # Panics
/// Never for payloads up to 4 GiB; larger payloads are a caller bug that
/// the size limits of [`encode`] already rule out.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.put_slice(&frame_header(payload.len()));
    out.put_slice(payload);
    out.freeze()
}

/// The length prefix [`frame`] puts before a payload of `len` bytes, for
/// a writer that sends it and the payload as separate buffers (without
/// copying the payload).
pub fn frame_header(len: usize) -> [u8; FRAME_HEADER_LEN] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// Splits a byte stream into the frames [`frame`] made, without trusting it:
/// a frame larger than the limit is an error before any of it is buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder accepting frames of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if one has arrived.
    ///
    /// Memory stays bounded: the buffer holds at most one partial frame
    /// (checked against the limit as soon as its header is in) plus whatever
    /// the caller pushed since the last call.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; FRAME_HEADER_LEN];
        header.copy_from_slice(&self.buf[..FRAME_HEADER_LEN]);
        let len = u32::from_be_bytes(header) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Small {
        a: u32,
        b: Vec<u8>,
    }
    impl WireMessage for Small {
        const MAX_SIZE: usize = 32;
    }

    #[test]
    fn round_trip_and_version_byte() {
        let msg = Small {
            a: 7,
            b: vec![1, 2],
        };
        let bytes = encode(&msg).expect("fits");
        assert_eq!(bytes[0], PROTOCOL_VERSION);
        assert_eq!(decode::<Small>(&bytes), Ok(msg));
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Chunk {
        index: u64,
        #[serde(with = "shared")]
        data: Bytes,
    }
    impl WireMessage for Chunk {
        const MAX_SIZE: usize = 1 << 20;
    }

    #[test]
    fn shared_fields_are_slices_of_the_frame_and_copies_otherwise() {
        let msg = Chunk {
            index: 3,
            data: Bytes::from(vec![7u8; 4096]),
        };
        let frame = encode(&msg).expect("fits");
        // The encoding is that of an unmarked `Bytes`.
        #[derive(Serialize)]
        struct Unmarked {
            index: u64,
            data: Bytes,
        }
        let unmarked = Unmarked {
            index: 3,
            data: msg.data.clone(),
        };
        assert_eq!(frame, encode_unchecked(&unmarked));

        let shared: Chunk = decode_shared(&frame).expect("decodes");
        assert_eq!(shared, msg);
        assert!(holds(&frame, &shared.data), "a slice of the frame");
        // In pieces: the data is the caller's own buffer, and the pieces
        // join to the same encoding.
        let pieces = encode_pieces(&msg).expect("fits");
        assert_eq!(pieces.len(), frame.len());
        let parts = pieces.clone().into_vec();
        assert!(
            parts.iter().any(|p| p.as_ptr() == msg.data.as_ptr()),
            "not copied"
        );
        assert_eq!(pieces.join(), frame);
        let too_big = Chunk {
            index: 0,
            data: Bytes::from(vec![0; 1 << 20]),
        };
        assert!(matches!(
            encode_pieces(&too_big),
            Err(CodecError::TooLarge { .. })
        ));
        // Nothing stays spliced: a later plain encode is whole.
        assert_eq!(encode(&msg).expect("fits"), frame);

        let copied: Chunk = decode(&frame).expect("decodes");
        assert_eq!(copied, msg);
        assert!(!holds(&frame, &copied.data), "a copy");
        // Nothing stays lent: a later plain decode copies again.
        let again: Chunk = decode(&frame).expect("decodes");
        assert!(!holds(&frame, &again.data));
        // A frame's bytes elsewhere (a sub-slice decoded on its own) are
        // no part of the frame lent, and are copied.
        let inner = frame.slice(..);
        let _lent = Lent::new(&Bytes::from_static(b"something else"));
        let other: Chunk = decode(&inner).expect("decodes");
        assert!(!holds(&frame, &other.data));
    }

    fn encode_unchecked<T: Serialize>(msg: &T) -> Bytes {
        let mut out = vec![PROTOCOL_VERSION];
        bincode::serde::encode_into_std_write(msg, &mut out, config()).expect("encodes");
        Bytes::from(out)
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        assert_eq!(decode::<Small>(&[]), Err(CodecError::Empty));
        assert_eq!(
            decode::<Small>(&[PROTOCOL_VERSION + 1, 0, 0]),
            Err(CodecError::Version {
                got: PROTOCOL_VERSION + 1
            })
        );
        assert!(matches!(
            decode::<Small>(&[PROTOCOL_VERSION; 40]),
            Err(CodecError::TooLarge { len: 40, max: 32 })
        ));
        let mut bytes = encode(&Small { a: 1, b: vec![] }).expect("fits").to_vec();
        bytes.push(0);
        assert_eq!(decode::<Small>(&bytes), Err(CodecError::Trailing(1)));
        // A length prefix claiming far more bytes than exist must not allocate
        // or panic.
        assert!(matches!(
            decode::<Small>(&[PROTOCOL_VERSION, 1, 0xfc, 0xff, 0xff, 0xff, 0x7f]),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            encode(&Small {
                a: 1,
                b: vec![0; 64]
            }),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn frames_split_across_pushes() {
        let mut dec = FrameDecoder::new(16);
        let a = frame(b"hello");
        let b = frame(b"");
        let mut stream = a.to_vec();
        stream.extend_from_slice(&b);
        for byte in &stream[..3] {
            dec.push(&[*byte]);
            assert_eq!(dec.next_frame(), Ok(None));
        }
        dec.push(&stream[3..]);
        assert_eq!(dec.next_frame(), Ok(Some(Bytes::from_static(b"hello"))));
        assert_eq!(dec.next_frame(), Ok(Some(Bytes::new())));
        assert_eq!(dec.next_frame(), Ok(None));
    }

    /// A frame written as header and payload separately (the QUIC
    /// writers) is the frame `frame` builds, and decodes back.
    #[test]
    fn a_frame_header_and_its_payload_make_the_frame() {
        let payload = vec![7u8; 70_000];
        let mut split = frame_header(payload.len()).to_vec();
        split.extend_from_slice(&payload);
        assert_eq!(split, frame(&payload).to_vec());
        let mut dec = FrameDecoder::new(payload.len());
        dec.push(&split);
        assert_eq!(dec.next_frame(), Ok(Some(Bytes::from(payload))));
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let mut dec = FrameDecoder::new(4);
        dec.push(&frame(b"too long"));
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge { len: 8, max: 4 })
        );
    }
}
