//! gRPC status codes, `grpc-message` percent-encoding, and the mappings from HTTP/2 resets and HTTP
//! statuses to gRPC statuses (the gRPC spec's `http-grpc-status-mapping.md` and `PROTOCOL-HTTP2.md`).

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const OK: u32 = 0;
pub const CANCELLED: u32 = 1;
pub const UNKNOWN: u32 = 2;
pub const INVALID_ARGUMENT: u32 = 3;
pub const DEADLINE_EXCEEDED: u32 = 4;
pub const PERMISSION_DENIED: u32 = 7;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const UNIMPLEMENTED: u32 = 12;
pub const INTERNAL: u32 = 13;
pub const UNAVAILABLE: u32 = 14;
pub const UNAUTHENTICATED: u32 = 16;

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A gRPC status the gateway itself answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: u32,
    pub message: String,
}

impl Status {
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
        }
    }

    /// Appends `grpc-status` and (when not empty) the percent-encoded `grpc-message` to `headers`.
    pub fn write_to(&self, headers: &mut HeaderMap) {
        headers.insert(GRPC_STATUS.clone(), HeaderValue::from(self.code));
        if !self.message.is_empty() {
            let encoded = percent_encode_message(&self.message);
            if let Ok(value) = HeaderValue::from_str(&encoded) {
                headers.insert(GRPC_MESSAGE.clone(), value);
            }
        }
    }

    /// A trailers frame (or trailers-only headers) carrying this status.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(2);
        self.write_to(&mut headers);
        headers
    }
}

/// Percent-encodes a `grpc-message` as the gRPC spec asks: every byte of the UTF-8 text outside printable
/// ASCII (0x20–0x7E), and `%` itself, as `%XX` (upper-case hex).
pub fn percent_encode_message(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

/// The gRPC status of a `grpc-status` header value; `None` when absent or not a number.
pub fn parse_grpc_status(headers: &HeaderMap) -> Option<u32> {
    let value = headers.get(&GRPC_STATUS)?;
    std::str::from_utf8(value.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The gRPC status a caller gets for an HTTP/2 RST_STREAM with `reason` (the spec's table: `NO_ERROR`,
/// `PROTOCOL_ERROR`, `INTERNAL_ERROR`, `FLOW_CONTROL_ERROR`, `SETTINGS_TIMEOUT`, `FRAME_SIZE_ERROR`,
/// `COMPRESSION_ERROR`, `CONNECT_ERROR` → INTERNAL; `REFUSED_STREAM` → UNAVAILABLE; `CANCEL` → CANCELLED;
/// `ENHANCE_YOUR_CALM` → RESOURCE_EXHAUSTED; `INADEQUATE_SECURITY` → PERMISSION_DENIED).
pub fn code_for_h2_reason(reason: h2::Reason) -> u32 {
    match reason {
        h2::Reason::CANCEL => CANCELLED,
        h2::Reason::REFUSED_STREAM => UNAVAILABLE,
        h2::Reason::ENHANCE_YOUR_CALM => RESOURCE_EXHAUSTED,
        h2::Reason::INADEQUATE_SECURITY => PERMISSION_DENIED,
        _ => INTERNAL,
    }
}

/// The gRPC status of an HTTP response that is not gRPC (the spec's `http-grpc-status-mapping.md`).
pub fn code_for_http_status(status: http::StatusCode) -> u32 {
    match status.as_u16() {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encodes_as_the_spec_asks() {
        assert_eq!(percent_encode_message("plain text: ok!"), "plain text: ok!");
        assert_eq!(percent_encode_message("100% sure"), "100%25 sure");
        assert_eq!(percent_encode_message("line\nbreak"), "line%0Abreak");
        assert_eq!(percent_encode_message("caf\u{e9}"), "caf%C3%A9");
        assert_eq!(percent_encode_message("\u{7f}~"), "%7F~");
    }

    #[test]
    fn writes_status_and_message() {
        let headers = Status::new(UNAVAILABLE, "down 100%").to_headers();
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers["grpc-message"], "down 100%25");
        assert!(Status::new(OK, "")
            .to_headers()
            .get("grpc-message")
            .is_none());
        assert_eq!(parse_grpc_status(&headers), Some(14));
    }

    #[test]
    fn parses_grpc_status() {
        let mut headers = HeaderMap::new();
        assert_eq!(parse_grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("x"));
        assert_eq!(parse_grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(parse_grpc_status(&headers), Some(5));
    }

    #[test]
    fn maps_h2_reasons() {
        assert_eq!(code_for_h2_reason(h2::Reason::CANCEL), CANCELLED);
        assert_eq!(code_for_h2_reason(h2::Reason::REFUSED_STREAM), UNAVAILABLE);
        assert_eq!(
            code_for_h2_reason(h2::Reason::ENHANCE_YOUR_CALM),
            RESOURCE_EXHAUSTED
        );
        assert_eq!(
            code_for_h2_reason(h2::Reason::INADEQUATE_SECURITY),
            PERMISSION_DENIED
        );
        for reason in [
            h2::Reason::NO_ERROR,
            h2::Reason::PROTOCOL_ERROR,
            h2::Reason::INTERNAL_ERROR,
            h2::Reason::FLOW_CONTROL_ERROR,
            h2::Reason::FRAME_SIZE_ERROR,
            h2::Reason::COMPRESSION_ERROR,
        ] {
            assert_eq!(code_for_h2_reason(reason), INTERNAL);
        }
    }

    #[test]
    fn maps_http_statuses() {
        use http::StatusCode;
        assert_eq!(code_for_http_status(StatusCode::BAD_REQUEST), INTERNAL);
        assert_eq!(
            code_for_http_status(StatusCode::UNAUTHORIZED),
            UNAUTHENTICATED
        );
        assert_eq!(
            code_for_http_status(StatusCode::FORBIDDEN),
            PERMISSION_DENIED
        );
        assert_eq!(code_for_http_status(StatusCode::NOT_FOUND), UNIMPLEMENTED);
        assert_eq!(
            code_for_http_status(StatusCode::TOO_MANY_REQUESTS),
            UNAVAILABLE
        );
        assert_eq!(code_for_http_status(StatusCode::BAD_GATEWAY), UNAVAILABLE);
        assert_eq!(
            code_for_http_status(StatusCode::SERVICE_UNAVAILABLE),
            UNAVAILABLE
        );
        assert_eq!(
            code_for_http_status(StatusCode::GATEWAY_TIMEOUT),
            UNAVAILABLE
        );
        assert_eq!(code_for_http_status(StatusCode::IM_A_TEAPOT), UNKNOWN);
    }
}
