//! Call metadata between HTTP/2 headers and what Python sees: names lower case, `-bin` values
//! base64-decoded bytes, other values text; the checks a caller's metadata must pass (size, base64); and
//! the caller's address as gRPC writes it.

use std::net::SocketAddr;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Standard alphabet; decodes padded and unpadded input alike, and leftover bits in the last symbol, as
/// gRPC's own decoders do; encodes without padding (as gRPC does).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// What HTTP/2 adds to each header field when it counts a header list's size (RFC 9113, 6.5.2).
pub const FIELD_OVERHEAD: u64 = 32;

/// One metadata value: text, or the bytes of a `-bin` key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Binary(Vec<u8>),
}

/// Headers the gateway writes itself on the upstream request, and ones HTTP/2 forbids: they are left out of
/// the metadata Python gives for the upstream.
const SET_BY_GATEWAY: [&str; 11] = [
    "content-type",
    "te",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

pub fn is_binary(name: &str) -> bool {
    name.ends_with("-bin")
}

pub fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    BASE64.decode(text).ok()
}

pub fn encode_base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// The size of a header list as HTTP/2 counts it: per field, its name, its value and 32.
pub fn header_list_size(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() as u64 + value.len() as u64 + FIELD_OVERHEAD)
        .sum()
}

/// The refusal of a caller whose metadata is over the limit.
pub fn too_large_message(size: u64, limit: u64) -> String {
    format!(
        "the call's metadata is {size} bytes, over the gateway's limit of {limit} bytes ([limits] max_metadata_bytes)"
    )
}

/// The caller's headers as metadata, in order: `-bin` values decoded, other values as text (bytes outside
/// ASCII replaced when not UTF-8). `Err(message)` names the first `-bin` header that is not base64: such a
/// call is refused, never forwarded.
pub fn from_headers(headers: &HeaderMap) -> Result<Vec<(String, Value)>, String> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str();
            let value = if is_binary(name) {
                Value::Binary(decode_base64(value.as_bytes()).ok_or_else(|| {
                    format!(
                        "metadata {name} is not base64: a -bin header carries base64-encoded bytes"
                    )
                })?)
            } else {
                Value::Text(String::from_utf8_lossy(value.as_bytes()).into_owned())
            };
            Ok((name.to_owned(), value))
        })
        .collect()
}

/// One metadata entry as an HTTP/2 header: the name lower-cased and checked, a `-bin` value base64-encoded
/// (text given for a `-bin` key is encoded as its UTF-8 bytes), a text value checked to be a valid header
/// value. Bytes given for a key that is not `-bin` are sent as they are.
pub fn to_header(name: &str, value: &Value) -> Result<(HeaderName, HeaderValue), String> {
    let lower = name.to_ascii_lowercase();
    let header_name = HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| format!("invalid metadata key {name:?}"))?;
    let header_value = if is_binary(&lower) {
        let bytes = match value {
            Value::Text(text) => text.as_bytes(),
            Value::Binary(bytes) => bytes.as_slice(),
        };
        HeaderValue::from_str(&encode_base64(bytes)).map_err(|e| e.to_string())?
    } else {
        match value {
            Value::Text(text) => HeaderValue::from_str(text)
                .map_err(|_| format!("invalid value for metadata key {name:?}: {text:?}"))?,
            Value::Binary(bytes) => HeaderValue::from_bytes(bytes)
                .map_err(|_| format!("invalid value for metadata key {name:?}"))?,
        }
    };
    Ok((header_name, header_value))
}

/// Metadata entries as headers appended to `headers` (several values of one key are kept).
pub fn append_all(headers: &mut HeaderMap, entries: &[(HeaderName, HeaderValue)]) {
    for (name, value) in entries {
        headers.append(name.clone(), value.clone());
    }
}

/// Whether Python's metadata for the upstream may carry `name` (the gateway sets the others itself).
pub fn forwardable(name: &HeaderName) -> bool {
    !SET_BY_GATEWAY.contains(&name.as_str())
}

/// Headers HTTP/2 forbids in a response, and those the gateway writes itself on a refusal or error: left
/// out of the headers and trailers Python gives for the caller.
const NOT_REPLYABLE: [&str; 9] = [
    "content-type",
    "grpc-status",
    "grpc-message",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

/// Whether Python's reply headers or trailers may carry `name`.
pub fn replyable(name: &HeaderName) -> bool {
    !NOT_REPLYABLE.contains(&name.as_str())
}

/// The caller's address as gRPC writes it: `ipv4:127.0.0.1:5555`, `ipv6:[::1]:5555`.
pub fn format_peer(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => format!("ipv4:{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("ipv6:[{}]:{}", v6.ip(), v6.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_padded_and_unpadded() {
        assert_eq!(decode_base64(b"AAEC").unwrap(), vec![0, 1, 2]);
        assert_eq!(decode_base64(b"AAE=").unwrap(), vec![0, 1]);
        assert_eq!(decode_base64(b"AAE").unwrap(), vec![0, 1]);
        assert_eq!(decode_base64(b"AA==").unwrap(), vec![0]);
        assert_eq!(decode_base64(b"AA").unwrap(), vec![0]);
        assert_eq!(decode_base64(b"+/8").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(decode_base64(b"AAF").unwrap(), vec![0, 1]);
        assert_eq!(decode_base64(b"").unwrap(), Vec::<u8>::new());
        assert!(decode_base64(b"A").is_none());
        assert!(decode_base64(b"***").is_none());
        assert!(decode_base64(b"!!not*base64!!").is_none());
        assert!(decode_base64(b"AA AA").is_none());
        assert_eq!(encode_base64(&[0, 1]), "AAE");
        assert_eq!(encode_base64(&[0xfb, 0xff]), "+/8");
    }

    #[test]
    fn headers_to_metadata() {
        let mut headers = HeaderMap::new();
        headers.append("x-api-key", HeaderValue::from_static("secret"));
        headers.append("trace-bin", HeaderValue::from_static("AAEC"));
        headers.append("trace-bin", HeaderValue::from_static("AAE="));
        let metadata = from_headers(&headers).unwrap();
        assert_eq!(
            metadata,
            vec![
                ("x-api-key".to_owned(), Value::Text("secret".to_owned())),
                ("trace-bin".to_owned(), Value::Binary(vec![0, 1, 2])),
                ("trace-bin".to_owned(), Value::Binary(vec![0, 1])),
            ]
        );
        headers.append("x-note", HeaderValue::from_static("*not base64, not -bin*"));
        assert!(from_headers(&headers).is_ok());
        headers.append("odd-bin", HeaderValue::from_static("*not base64*"));
        assert_eq!(
            from_headers(&headers).unwrap_err(),
            "metadata odd-bin is not base64: a -bin header carries base64-encoded bytes"
        );
    }

    #[test]
    fn header_list_size_as_http2_counts_it() {
        let mut headers = HeaderMap::new();
        assert_eq!(header_list_size(&headers), 0);
        headers.append("x-api-key", HeaderValue::from_static("secret"));
        assert_eq!(header_list_size(&headers), 9 + 6 + 32);
        headers.append("x-api-key", HeaderValue::from_static(""));
        assert_eq!(header_list_size(&headers), 9 + 6 + 32 + 9 + 32);
        assert_eq!(
            too_large_message(9000, 8192),
            "the call's metadata is 9000 bytes, over the gateway's limit of 8192 bytes ([limits] max_metadata_bytes)"
        );
    }

    #[test]
    fn metadata_to_headers() {
        let (name, value) = to_header("X-User", &Value::Text("ada".into())).unwrap();
        assert_eq!((name.as_str(), value.as_bytes()), ("x-user", &b"ada"[..]));
        let (name, value) = to_header("id-bin", &Value::Binary(vec![0, 1, 2, 3])).unwrap();
        assert_eq!(
            (name.as_str(), value.as_bytes()),
            ("id-bin", &b"AAECAw"[..])
        );
        let (_, value) = to_header("t-bin", &Value::Text("hi".into())).unwrap();
        assert_eq!(value.as_bytes(), b"aGk");
        assert!(to_header("bad key", &Value::Text("x".into())).is_err());
        assert!(to_header("x", &Value::Text("new\nline".into())).is_err());
        // round trip through the caller's side
        let mut headers = HeaderMap::new();
        let (name, value) = to_header("id-bin", &Value::Binary(vec![9, 8, 7, 6, 5])).unwrap();
        headers.append(name, value);
        assert_eq!(
            from_headers(&headers).unwrap()[0].1,
            Value::Binary(vec![9, 8, 7, 6, 5])
        );
    }

    #[test]
    fn gateway_headers_are_not_forwardable() {
        assert!(!forwardable(&HeaderName::from_static("te")));
        assert!(!forwardable(&HeaderName::from_static("grpc-timeout")));
        assert!(!forwardable(&HeaderName::from_static("connection")));
        assert!(forwardable(&HeaderName::from_static("x-api-key")));
        assert!(forwardable(&HeaderName::from_static("user-agent")));
        assert!(!replyable(&HeaderName::from_static("grpc-status")));
        assert!(replyable(&HeaderName::from_static("retry-after")));
        assert!(replyable(&HeaderName::from_static(
            "grpc-status-details-bin"
        )));
    }

    #[test]
    fn peers_as_grpc_writes_them() {
        assert_eq!(
            format_peer(&"127.0.0.1:5555".parse().unwrap()),
            "ipv4:127.0.0.1:5555"
        );
        assert_eq!(
            format_peer(&"[::1]:5555".parse().unwrap()),
            "ipv6:[::1]:5555"
        );
        assert_eq!(
            format_peer(&"[2001:db8::7]:80".parse().unwrap()),
            "ipv6:[2001:db8::7]:80"
        );
    }
}
