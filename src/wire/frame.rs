//! Length-prefixed framing shared by the peer and client protocols: a frame is a 4-byte
//! little-endian payload length followed by the payload. This module only checks the
//! header against a limit; it never reads past what it is given and never panics.

use thiserror::Error;

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {length_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge { length_bytes: u64, limit_bytes: u64 },
    #[error("empty frame")]
    Empty,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_bytes: usize,
}

impl FrameHeader {
    /// Parses the header at the start of `bytes`; `Ok(None)` if fewer than
    /// `FRAME_HEADER_BYTES` bytes are present yet.
    pub fn parse(
        bytes: &[u8],
        payload_bytes_max: usize,
    ) -> Result<Option<FrameHeader>, FrameError> {
        let Some(prefix) = bytes.get(..FRAME_HEADER_BYTES) else {
            return Ok(None);
        };
        let mut length = [0u8; FRAME_HEADER_BYTES];
        length.copy_from_slice(prefix);
        let payload_bytes = u32::from_le_bytes(length) as usize;
        if payload_bytes == 0 {
            return Err(FrameError::Empty);
        }
        if payload_bytes > payload_bytes_max {
            return Err(FrameError::TooLarge {
                length_bytes: payload_bytes as u64,
                limit_bytes: payload_bytes_max as u64,
            });
        }
        Ok(Some(FrameHeader { payload_bytes }))
    }

    /// Writes the header for a payload of `payload_bytes` (which must fit in u32).
    pub fn encode(payload_bytes: usize) -> [u8; FRAME_HEADER_BYTES] {
        let length = u32::try_from(payload_bytes).unwrap_or_else(|_| {
            panic!("frame payload of {payload_bytes} bytes does not fit a u32 length")
        });
        length.to_le_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_enforces_the_limit() {
        // A header parses back to its length; zero and oversize lengths are refused.
        let header = FrameHeader::encode(300);
        assert_eq!(
            FrameHeader::parse(&header, 1000),
            Ok(Some(FrameHeader { payload_bytes: 300 }))
        );
        assert_eq!(FrameHeader::parse(&header[..3], 1000), Ok(None));
        assert_eq!(
            FrameHeader::parse(&header, 299),
            Err(FrameError::TooLarge {
                length_bytes: 300,
                limit_bytes: 299
            })
        );
        assert_eq!(
            FrameHeader::parse(&[0, 0, 0, 0], 1000),
            Err(FrameError::Empty)
        );
    }
}
