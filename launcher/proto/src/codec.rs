//! Length-delimited postcard frames.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! postcard. The length is bounded by [`MAX_FRAME`] so that a garbage or
//! hostile peer cannot make us allocate without limit: a bad length or a body
//! that does not decode is a [`DecodeError`], never a panic.

use serde::{de::DeserializeOwned, Serialize};

/// Largest frame body accepted (16 MiB). Output chunks and job lists stay far below.
pub const MAX_FRAME: usize = 16 << 20;

/// Why bytes from a peer could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix exceeds [`MAX_FRAME`]: almost always a peer that is not
    /// speaking this protocol at all.
    #[error("frame of {len} bytes exceeds the {max}-byte limit (is the peer speaking the launcher protocol?)")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The body is not a valid postcard encoding of the expected message.
    #[error("malformed {what} frame: {source}")]
    Malformed {
        /// Which message type was expected.
        what: &'static str,
        /// The postcard error.
        #[source]
        source: postcard::Error,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
}

/// Encode a message body (no length prefix).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("postcard encoding into a Vec cannot fail")
}

/// Encode a message as a complete frame: length prefix plus body.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = encode(msg);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decode a message body (no length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(body).map_err(|source| DecodeError::Malformed {
        what: std::any::type_name::<T>().rsplit("::").next().unwrap_or("message"),
        source,
    })
}

/// Incremental frame splitter for a byte stream: feed bytes, take whole frames.
#[derive(Default, Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append bytes received from the stream.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Take the next complete frame body, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(DecodeError::TooLarge { len, max: MAX_FRAME });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }

    /// Call at end of stream: an error if a partial frame is left over.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = if self.buf.len() >= 4 {
            4 + u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
        } else {
            4
        };
        Err(DecodeError::Truncated { have: self.buf.len(), need })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hello, Role, PROTOCOL_VERSION};

    #[test]
    fn frames_split_across_arbitrary_chunks() {
        let a = encode_frame(&Hello { version: PROTOCOL_VERSION, role: Role::Client });
        let b = encode_frame(&Hello { version: 7, role: Role::Agent });
        let all: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        for split in 0..all.len() {
            let mut d = FrameDecoder::new();
            d.extend(&all[..split]);
            let mut got = Vec::new();
            while let Some(f) = d.next_frame().unwrap() {
                got.push(decode::<Hello>(&f).unwrap());
            }
            d.extend(&all[split..]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(decode::<Hello>(&f).unwrap());
            }
            d.finish().unwrap();
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(got[1].version, 7);
        }
    }

    #[test]
    fn oversized_length_is_an_error_not_an_allocation() {
        let mut d = FrameDecoder::new();
        d.extend(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        let err = d.next_frame().unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        let err = decode::<Hello>(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(err.to_string().starts_with("malformed Hello frame"), "{err}");
    }

    #[test]
    fn truncated_stream_is_reported() {
        let f = encode_frame(&Hello { version: 1, role: Role::Client });
        let mut d = FrameDecoder::new();
        d.extend(&f[..f.len() - 1]);
        assert!(d.next_frame().unwrap().is_none());
        assert!(matches!(d.finish(), Err(DecodeError::Truncated { .. })));
    }
}
