//! Retries of a route's idempotent unary methods, by the rules grpc core follows for a service config's
//! `retryPolicy` (gRFC A6): UNAVAILABLE before any response header is retried, after a random wait in
//! [0, current backoff), the backoff growing by a multiplier up to a maximum; at most 5 attempts in all;
//! a server's `grpc-retry-pushback-ms` overrides the wait (or forbids the retry); and per upstream a
//! token bucket (gRPC's retry throttling) stops retries while most attempts fail.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName};

/// grpc core allows no more attempts than this, whatever a policy asks.
pub const MAX_ATTEMPTS: u32 = 5;

static PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// One method's retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (2 to 5).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

impl RetryPolicy {
    /// Checks a policy as Python gives it: (max_attempts, initial backoff s, max backoff s, multiplier).
    pub fn new(
        max_attempts: u32,
        initial_backoff: f64,
        max_backoff: f64,
        multiplier: f64,
    ) -> Result<RetryPolicy, String> {
        if max_attempts < 1 {
            return Err(format!(
                "a retry policy's max_attempts must be at least 1, not {max_attempts}"
            ));
        }
        let positive = |value: f64, what: &str| {
            if value > 0.0 {
                Duration::try_from_secs_f64(value).map_err(|_| {
                    format!(
                        "a retry policy's {what} must be a finite number of seconds, not {value}"
                    )
                })
            } else {
                Err(format!(
                    "a retry policy's {what} must be more than 0 seconds, not {value}"
                ))
            }
        };
        if !(multiplier.is_finite() && multiplier > 0.0) {
            return Err(format!(
                "a retry policy's backoff multiplier must be more than 0, not {multiplier}"
            ));
        }
        Ok(RetryPolicy {
            max_attempts: max_attempts.min(MAX_ATTEMPTS),
            initial_backoff: positive(initial_backoff, "initial backoff")?,
            max_backoff: positive(max_backoff, "max backoff")?,
            multiplier,
        })
    }
}

/// The waits between one call's attempts.
pub struct Backoff<'a> {
    policy: &'a RetryPolicy,
    current: Duration,
}

impl<'a> Backoff<'a> {
    pub fn new(policy: &'a RetryPolicy) -> Backoff<'a> {
        Backoff {
            policy,
            current: policy.initial_backoff.min(policy.max_backoff),
        }
    }

    /// The wait before the next attempt, `random` in [0, 1) picking it in [0, current backoff); the backoff
    /// then grows by the multiplier, up to the maximum.
    pub fn next(&mut self, random: f64) -> Duration {
        let wait = self.current.mul_f64(random.clamp(0.0, 1.0));
        self.current = self
            .current
            .mul_f64(self.policy.multiplier)
            .min(self.policy.max_backoff);
        wait
    }

    /// After a server's pushback, the backoff starts over (as grpc core does).
    pub fn reset(&mut self) {
        self.current = self.policy.initial_backoff.min(self.policy.max_backoff);
    }
}

/// What a failed attempt's server said about retrying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushback {
    /// Nothing: the policy's backoff decides.
    None,
    /// Retry after this long.
    After(Duration),
    /// Do not retry (a negative or malformed value).
    Stop,
}

pub fn pushback(headers: &HeaderMap) -> Pushback {
    let Some(value) = headers.get(&PUSHBACK) else {
        return Pushback::None;
    };
    match std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
    {
        Some(millis) => Pushback::After(Duration::from_millis(millis)),
        None => Pushback::Stop,
    }
}

/// gRPC's retry throttling for one upstream: 10 tokens, each failed attempt takes one, each success gives
/// back a tenth; retries only while more than half are left. Kept in thousandths of a token.
pub struct Throttle {
    milli_tokens: AtomicU64,
}

const MAX_MILLI_TOKENS: u64 = 10_000;
const MILLI_TOKEN_RATIO: u64 = 100;

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            milli_tokens: AtomicU64::new(MAX_MILLI_TOKENS),
        }
    }
}

impl Throttle {
    pub fn record_success(&self) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tokens| {
                Some((tokens + MILLI_TOKEN_RATIO).min(MAX_MILLI_TOKENS))
            });
    }

    /// Takes a token for a failed attempt; whether a retry is still allowed.
    pub fn record_failure(&self) -> bool {
        let before = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tokens| {
                Some(tokens.saturating_sub(1000))
            })
            .unwrap_or(0);
        before.saturating_sub(1000) > MAX_MILLI_TOKENS / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(3, 0.05, 0.15, 2.0).unwrap()
    }

    #[test]
    fn checks_and_caps_a_policy() {
        assert_eq!(policy().max_attempts, 3);
        assert_eq!(policy().initial_backoff, Duration::from_millis(50));
        assert_eq!(
            RetryPolicy::new(9, 0.05, 1.0, 2.0).unwrap().max_attempts,
            MAX_ATTEMPTS
        );
        assert!(RetryPolicy::new(0, 0.05, 1.0, 2.0).is_err());
        assert!(RetryPolicy::new(3, 0.0, 1.0, 2.0).is_err());
        assert!(RetryPolicy::new(3, 0.05, f64::INFINITY, 2.0).is_err());
        assert!(RetryPolicy::new(3, 0.05, 1.0, f64::NAN).is_err());
        assert!(RetryPolicy::new(3, 0.05, 1.0, 0.0).is_err());
    }

    #[test]
    fn backoff_is_random_below_a_growing_capped_bound() {
        let policy = policy();
        let mut backoff = Backoff::new(&policy);
        let almost = 0.999;
        let waits: Vec<Duration> = (0..4).map(|_| backoff.next(almost)).collect();
        let bounds = [50, 100, 150, 150].map(Duration::from_millis);
        for (wait, bound) in waits.iter().zip(bounds) {
            assert!(
                *wait < bound && *wait > bound.mul_f64(0.99),
                "{wait:?} {bound:?}"
            );
        }
        assert_eq!(backoff.next(0.0), Duration::ZERO);
        backoff.reset();
        assert_eq!(backoff.next(0.5), Duration::from_millis(25));
        // An initial backoff over the maximum is held to it.
        let policy = RetryPolicy::new(2, 5.0, 1.0, 2.0).unwrap();
        assert_eq!(Backoff::new(&policy).next(0.5), Duration::from_millis(500));
    }

    #[test]
    fn reads_pushback() {
        let mut headers = HeaderMap::new();
        assert_eq!(pushback(&headers), Pushback::None);
        headers.insert("grpc-retry-pushback-ms", HeaderValue::from_static("250"));
        assert_eq!(
            pushback(&headers),
            Pushback::After(Duration::from_millis(250))
        );
        headers.insert("grpc-retry-pushback-ms", HeaderValue::from_static("-1"));
        assert_eq!(pushback(&headers), Pushback::Stop);
        headers.insert("grpc-retry-pushback-ms", HeaderValue::from_static("soon"));
        assert_eq!(pushback(&headers), Pushback::Stop);
    }

    #[test]
    fn throttle_stops_retries_below_half_its_tokens() {
        let throttle = Throttle::default();
        // 10 tokens: failures leave 9, 8, 7, 6 (retries allowed), then 5 (not more than half).
        let allowed: Vec<bool> = (0..6).map(|_| throttle.record_failure()).collect();
        assert_eq!(allowed, [true, true, true, true, false, false]);
        // 4 tokens left: 21 successes give back 2.1, so the next failure leaves 5.1.
        for _ in 0..21 {
            throttle.record_success();
        }
        assert!(throttle.record_failure());
        for _ in 0..1000 {
            throttle.record_success();
        }
        assert_eq!(throttle.milli_tokens.load(Ordering::Relaxed), 10_000);
        for _ in 0..100 {
            throttle.record_failure();
        }
        assert_eq!(throttle.milli_tokens.load(Ordering::Relaxed), 0);
    }
}
