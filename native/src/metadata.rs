//! Call metadata between HTTP/2 headers and what Python sees: names lower case, `-bin` values
//! base64-decoded bytes, other values text; and the caller's address as gRPC writes it.

use std::net::SocketAddr;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Standard alphabet; decodes padded and unpadded input alike, encodes without padding (as gRPC does).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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

/// The caller's headers as metadata, in order: `-bin` values decoded (kept raw when they are not base64),
/// other values as text (bytes outside ASCII replaced when not UTF-8).
pub fn from_headers(headers: &HeaderMap) -> Vec<(String, Value)> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str();
            let value = if is_binary(name) {
                Value::Binary(
                    decode_base64(value.as_bytes()).unwrap_or_else(|| value.as_bytes().to_vec()),
                )
            } else {
                Value::Text(String::from_utf8_lossy(value.as_bytes()).into_owned())
            };
            (name.to_owned(), value)
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
        assert!(decode_base64(b"A").is_none());
        assert!(decode_base64(b"***").is_none());
        assert_eq!(encode_base64(&[0, 1]), "AAE");
        assert_eq!(encode_base64(&[0xfb, 0xff]), "+/8");
    }

    #[test]
    fn headers_to_metadata() {
        let mut headers = HeaderMap::new();
        headers.append("x-api-key", HeaderValue::from_static("secret"));
        headers.append("trace-bin", HeaderValue::from_static("AAEC"));
        headers.append("trace-bin", HeaderValue::from_static("AAE="));
        headers.append("odd-bin", HeaderValue::from_static("*not base64*"));
        let metadata = from_headers(&headers);
        assert_eq!(
            metadata,
            vec![
                ("x-api-key".to_owned(), Value::Text("secret".to_owned())),
                ("trace-bin".to_owned(), Value::Binary(vec![0, 1, 2])),
                ("trace-bin".to_owned(), Value::Binary(vec![0, 1])),
                (
                    "odd-bin".to_owned(),
                    Value::Binary(b"*not base64*".to_vec())
                ),
            ]
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
            from_headers(&headers)[0].1,
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
