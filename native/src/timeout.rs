//! The `grpc-timeout` header: parsing (tonic's rules) and encoding the time left for the upstream.

use std::time::Duration;

/// The most digits a `grpc-timeout` value may have (the gRPC spec: `TimeoutValue → {positive integer as ASCII
/// string of at most 8 digits}`).
const MAX_DIGITS: usize = 8;

/// The most characters of a malformed value that its refusal shows.
const SHOWN_CHARS: usize = 40;

/// The caller's `grpc-timeout`: None when it sent none; `Err(message)` when it is malformed, which gRPC
/// servers answer with INTERNAL.
pub fn caller_timeout(value: Option<&[u8]>) -> Result<Option<Duration>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    parse_grpc_timeout(value)
        .map(Some)
        .ok_or_else(|| malformed_message(value))
}

/// Why a `grpc-timeout` value is refused, showing at most 40 characters of it.
pub fn malformed_message(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut shown: String = text.chars().take(SHOWN_CHARS).collect();
    if text.chars().nth(SHOWN_CHARS).is_some() {
        shown.push('…');
    }
    format!("grpc-timeout '{shown}' is malformed: 1 to 8 digits and a unit (H, M, S, m, u, n)")
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H` hours, `M` minutes, `S` seconds,
/// `m` milliseconds, `u` microseconds, `n` nanoseconds). `None` when it is not valid.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let duration = match unit {
        b'H' => Duration::from_secs(number * 60 * 60),
        b'M' => Duration::from_secs(number * 60),
        b'S' => Duration::from_secs(number),
        b'm' => Duration::from_millis(number),
        b'u' => Duration::from_micros(number),
        b'n' => Duration::from_nanos(number),
        _ => return None,
    };
    Some(duration)
}

/// Encodes `duration` as a `grpc-timeout` value in the finest unit whose count fits in 8 digits, rounding
/// down (as tonic's `duration_to_grpc_timeout` does); a duration over 99,999,999 hours is sent as that.
pub fn encode_grpc_timeout(duration: Duration) -> String {
    const LIMIT: u128 = 100_000_000; // 10^8: the first count that needs 9 digits
    let nanos = duration.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        let count = nanos / per;
        if count < LIMIT {
            return format!("{count}{unit}");
        }
    }
    format!("{}H", LIMIT - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout(b"10S"), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_grpc_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout(b"7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_grpc_timeout(b"0m"), Some(Duration::ZERO));
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [
            &b""[..],
            b"S",
            b"123456789S",
            b"10",
            b"10s",
            b"1.5S",
            b"-1S",
            b" 1S",
            b"1 S",
            b"1x",
            b"\xff1S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn caller_timeout_absent_valid_or_malformed() {
        assert_eq!(caller_timeout(None), Ok(None));
        assert_eq!(
            caller_timeout(Some(b"5S")),
            Ok(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            caller_timeout(Some(b"soon")).unwrap_err(),
            "grpc-timeout 'soon' is malformed: 1 to 8 digits and a unit (H, M, S, m, u, n)"
        );
        assert!(caller_timeout(Some(b"123456789S"))
            .unwrap_err()
            .starts_with("grpc-timeout '123456789S' is malformed"));
        assert!(caller_timeout(Some(b"10x"))
            .unwrap_err()
            .starts_with("grpc-timeout '10x' is malformed"));
        let long = "9".repeat(100);
        let message = caller_timeout(Some(long.as_bytes())).unwrap_err();
        assert!(message.starts_with(&format!("grpc-timeout '{}…' is", "9".repeat(40))));
        let forty = "x".repeat(40);
        let message = caller_timeout(Some(forty.as_bytes())).unwrap_err();
        assert!(message.starts_with(&format!("grpc-timeout '{forty}' is")));
        assert!(caller_timeout(Some(b"\xff1S"))
            .unwrap_err()
            .starts_with("grpc-timeout '\u{fffd}1S'"));
    }

    #[test]
    fn encodes_in_the_finest_unit_that_fits() {
        assert_eq!(encode_grpc_timeout(Duration::from_nanos(5)), "5n");
        assert_eq!(encode_grpc_timeout(Duration::from_millis(20)), "20000000n");
        assert_eq!(encode_grpc_timeout(Duration::from_millis(200)), "200000u");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(5)), "5000000u");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(500)), "500000m");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(
            encode_grpc_timeout(Duration::from_secs(200_000_000)),
            "3333333M"
        );
        assert_eq!(
            encode_grpc_timeout(Duration::from_secs(u64::MAX)),
            "99999999H"
        );
        assert_eq!(encode_grpc_timeout(Duration::ZERO), "0n");
    }

    #[test]
    fn round_trips_within_a_unit() {
        for millis in [1u64, 999, 1_000, 65_432, 3_600_000, 86_400_000] {
            let d = Duration::from_millis(millis);
            let back = parse_grpc_timeout(encode_grpc_timeout(d).as_bytes()).unwrap();
            assert!(
                back <= d && d - back < Duration::from_millis(1),
                "{millis}: {back:?}"
            );
        }
    }
}
