//! The first request message as the decider reads it: inflated per the call's `grpc-encoding` when its
//! compressed flag is set (gzip, deflate), never past the message size limit. What goes upstream is not
//! touched here: the upstream always gets the caller's bytes as they came.

use std::io::Read;

use flate2::read::{GzDecoder, ZlibDecoder};
use http::header::{HeaderName, HeaderValue};

use crate::status::{Status, INTERNAL, RESOURCE_EXHAUSTED, UNIMPLEMENTED};

/// What the gateway can read, as a `grpc-accept-encoding` value.
pub const ACCEPTED: &str = "gzip,deflate,identity";

/// A first message the gateway refuses: the status, and the headers that go with it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    fn plain(code: u32, message: String) -> Refusal {
        Refusal {
            status: Status::new(code, message),
            headers: Vec::new(),
        }
    }
}

/// The payload of the first message as the decider reads it. `compressed` is the message's flag,
/// `encoding` the call's `grpc-encoding`, `limit` the largest message allowed (inflated too).
pub fn readable(
    compressed: bool,
    encoding: Option<&[u8]>,
    payload: &[u8],
    limit: u64,
) -> Result<Option<Vec<u8>>, Refusal> {
    if !compressed {
        return Ok(None);
    }
    let encoding = encoding.map(|value| String::from_utf8_lossy(value).trim().to_ascii_lowercase());
    let inflated = match encoding.as_deref() {
        None | Some("" | "identity") => {
            return Err(Refusal::plain(
                INTERNAL,
                "the request message is marked compressed but the call names no grpc-encoding"
                    .to_owned(),
            ))
        }
        Some("gzip") => inflate(GzDecoder::new(payload), limit),
        // gRPC's "deflate" is zlib's format (RFC 1950), as grpc core and grpc-java write it.
        Some("deflate") => inflate(ZlibDecoder::new(payload), limit),
        Some(other) => {
            let shown: String = other.chars().take(40).collect();
            return Err(Refusal {
                status: Status::new(
                    UNIMPLEMENTED,
                    format!(
                        "grpc-encoding {shown} is not supported here (gzip, deflate, identity)"
                    ),
                ),
                headers: vec![(
                    HeaderName::from_static("grpc-accept-encoding"),
                    HeaderValue::from_static(ACCEPTED),
                )],
            });
        }
    };
    match inflated {
        Ok(bytes) => Ok(Some(bytes)),
        Err(Inflate::TooLarge) => Err(Refusal::plain(
            RESOURCE_EXHAUSTED,
            format!(
                "the request message inflates to more than {limit} bytes ([limits] max_message_bytes)"
            ),
        )),
        Err(Inflate::Corrupt(error)) => Err(Refusal::plain(
            INTERNAL,
            format!(
                "the request message could not be decompressed ({}): {error}",
                encoding.unwrap_or_default()
            ),
        )),
    }
}

enum Inflate {
    TooLarge,
    Corrupt(std::io::Error),
}

/// Reads at most `limit` + 1 bytes: a bomb costs no more than the limit to find out.
fn inflate(decoder: impl Read, limit: u64) -> Result<Vec<u8>, Inflate> {
    let mut out = Vec::new();
    decoder
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(Inflate::Corrupt)?;
    if out.len() as u64 > limit {
        return Err(Inflate::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn uncompressed_is_left_alone() {
        assert_eq!(readable(false, None, b"abc", 10), Ok(None));
        // A call may name an encoding and still send a message uncompressed.
        assert_eq!(readable(false, Some(b"snappy"), b"abc", 10), Ok(None));
    }

    #[test]
    fn gzip_and_deflate_inflate() {
        let message = b"hello hello hello hello".to_vec();
        assert_eq!(
            readable(true, Some(b"gzip"), &gzip(&message), 100),
            Ok(Some(message.clone()))
        );
        assert_eq!(
            readable(true, Some(b"deflate"), &zlib(&message), 100),
            Ok(Some(message.clone()))
        );
        assert_eq!(
            readable(true, Some(b" GZIP "), &gzip(&message), 100),
            Ok(Some(message.clone()))
        );
        assert_eq!(
            readable(true, Some(b"gzip"), &gzip(b""), 0),
            Ok(Some(Vec::new()))
        );
        // Exactly at the limit is fine.
        assert_eq!(
            readable(true, Some(b"gzip"), &gzip(&message), message.len() as u64),
            Ok(Some(message))
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0; 16 << 20]);
        assert!(bomb.len() < 64 << 10);
        let refusal = readable(true, Some(b"gzip"), &bomb, 65536).unwrap_err();
        assert_eq!(refusal.status.code, RESOURCE_EXHAUSTED);
        assert_eq!(
            refusal.status.message,
            "the request message inflates to more than 65536 bytes ([limits] max_message_bytes)"
        );
        assert!(refusal.headers.is_empty());
        let refusal = readable(true, Some(b"deflate"), &zlib(&[1; 11]), 10).unwrap_err();
        assert_eq!(refusal.status.code, RESOURCE_EXHAUSTED);
    }

    #[test]
    fn corrupt_data_is_internal() {
        let refusal = readable(true, Some(b"gzip"), b"not gzip at all", 100).unwrap_err();
        assert_eq!(refusal.status.code, INTERNAL);
        assert!(
            refusal
                .status
                .message
                .starts_with("the request message could not be decompressed (gzip): "),
            "{}",
            refusal.status.message
        );
        let mut cut = gzip(b"some message or other");
        cut.truncate(cut.len() - 6);
        assert_eq!(
            readable(true, Some(b"gzip"), &cut, 100)
                .unwrap_err()
                .status
                .code,
            INTERNAL
        );
        let refusal = readable(true, Some(b"deflate"), &gzip(b"x"), 100).unwrap_err();
        assert!(refusal
            .status
            .message
            .starts_with("the request message could not be decompressed (deflate): "));
    }

    #[test]
    fn the_flag_without_an_encoding_is_internal() {
        for encoding in [None, Some(&b"identity"[..]), Some(b"")] {
            let refusal = readable(true, encoding, b"x", 100).unwrap_err();
            assert_eq!(
                refusal.status,
                Status::new(
                    INTERNAL,
                    "the request message is marked compressed but the call names no grpc-encoding"
                )
            );
        }
    }

    #[test]
    fn an_unknown_encoding_is_unimplemented_naming_what_is() {
        let refusal = readable(true, Some(b"snappy"), b"x", 100).unwrap_err();
        assert_eq!(
            refusal.status,
            Status::new(
                UNIMPLEMENTED,
                "grpc-encoding snappy is not supported here (gzip, deflate, identity)"
            )
        );
        assert_eq!(refusal.headers.len(), 1);
        assert_eq!(refusal.headers[0].0, "grpc-accept-encoding");
        assert_eq!(refusal.headers[0].1, "gzip,deflate,identity");
    }
}
