//! gRPC's length-prefixed messages (1 byte compressed flag, 4 bytes big-endian length, the payload): an
//! incremental counter that also enforces the message size limit, for bodies that arrive in any chunks.

use crate::status::{Status, RESOURCE_EXHAUSTED};

pub const PREFIX_LEN: usize = 5;

/// A message over the limit: its declared size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub size: u64,
    pub limit: u64,
}

impl TooLarge {
    /// The status a request over the limit ends with.
    pub fn request_status(&self) -> Status {
        Status::new(
            RESOURCE_EXHAUSTED,
            format!(
                "the request message is {} bytes, over the gateway's limit of {} bytes ([limits] max_message_bytes)",
                self.size, self.limit
            ),
        )
    }
}

/// The payload length of the message whose prefix starts `buf`, once the whole prefix is there.
pub fn prefix_length(buf: &[u8]) -> Option<u64> {
    let prefix = buf.get(..PREFIX_LEN)?;
    Some(u64::from(u32::from_be_bytes([
        prefix[1], prefix[2], prefix[3], prefix[4],
    ])))
}

/// Counts whole messages as their bytes pass, chunk by chunk (a prefix may be split across chunks), and
/// checks each message's declared size against `limit` as soon as its prefix is complete.
#[derive(Clone, Debug)]
pub struct FrameCounter {
    limit: Option<u64>,
    prefix: [u8; PREFIX_LEN],
    prefix_filled: usize,
    /// Payload bytes still to come of the message whose prefix was read; None while reading a prefix.
    payload_left: Option<u64>,
    complete: u64,
}

impl FrameCounter {
    /// `limit`: the largest payload allowed, None for no limit.
    pub fn new(limit: Option<u64>) -> Self {
        FrameCounter {
            limit,
            prefix: [0; PREFIX_LEN],
            prefix_filled: 0,
            payload_left: None,
            complete: 0,
        }
    }

    /// Whole messages seen so far.
    pub fn complete(&self) -> u64 {
        self.complete
    }

    /// Whether the bytes seen so far end exactly at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.prefix_filled == 0 && self.payload_left.is_none()
    }

    /// Takes the next chunk; returns how many messages it completed, or the first message over the limit.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<u64, TooLarge> {
        let before = self.complete;
        while !data.is_empty() {
            match self.payload_left {
                Some(left) => {
                    let take = left.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.finish_payload(left - take);
                }
                None => {
                    let take = (PREFIX_LEN - self.prefix_filled).min(data.len());
                    self.prefix[self.prefix_filled..self.prefix_filled + take]
                        .copy_from_slice(&data[..take]);
                    self.prefix_filled += take;
                    data = &data[take..];
                    if self.prefix_filled == PREFIX_LEN {
                        self.prefix_filled = 0;
                        let size = prefix_length(&self.prefix).unwrap_or(0);
                        if let Some(limit) = self.limit {
                            if size > limit {
                                return Err(TooLarge { size, limit });
                            }
                        }
                        self.finish_payload(size);
                    }
                }
            }
        }
        Ok(self.complete - before)
    }

    fn finish_payload(&mut self, left: u64) {
        if left == 0 {
            self.payload_left = None;
            self.complete += 1;
        } else {
            self.payload_left = Some(left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn counts_whole_messages_in_one_chunk() {
        let mut counter = FrameCounter::new(None);
        let mut body = message(b"hello");
        body.extend(message(b""));
        body.extend(message(b"world!"));
        assert_eq!(counter.feed(&body), Ok(3));
        assert_eq!(counter.complete(), 3);
        assert!(counter.at_boundary());
    }

    #[test]
    fn counts_across_every_split() {
        let mut body = message(b"hello");
        body.extend(message(&[7; 300]));
        body.extend(message(b""));
        for split in 0..=body.len() {
            for second in split..=body.len() {
                let mut counter = FrameCounter::new(Some(300));
                let mut total = 0;
                for chunk in [&body[..split], &body[split..second], &body[second..]] {
                    total += counter.feed(chunk).unwrap();
                }
                assert_eq!(total, 3, "split at {split}, {second}");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let mut counter = FrameCounter::new(Some(10));
        let body = [message(b"0123456789"), message(b"x")].concat();
        let mut seen = Vec::new();
        for byte in &body {
            seen.push(counter.feed(std::slice::from_ref(byte)).unwrap());
            if seen.len() == 5 {
                assert!(!counter.at_boundary());
            }
        }
        assert_eq!(seen.iter().sum::<u64>(), 2);
        assert_eq!(seen[14], 1, "the first message completes on its last byte");
        assert!(counter.at_boundary());
    }

    #[test]
    fn limit_is_checked_when_the_prefix_completes() {
        let mut counter = FrameCounter::new(Some(4));
        assert_eq!(counter.feed(&message(b"four")), Ok(1));
        let big = message(b"five!");
        assert_eq!(counter.feed(&big[..3]), Ok(0));
        assert_eq!(
            counter.feed(&big[3..5]),
            Err(TooLarge { size: 5, limit: 4 })
        );
        let status = TooLarge { size: 5, limit: 4 }.request_status();
        assert_eq!(status.code, RESOURCE_EXHAUSTED);
        assert_eq!(
            status.message,
            "the request message is 5 bytes, over the gateway's limit of 4 bytes ([limits] max_message_bytes)"
        );
    }

    #[test]
    fn huge_declared_length() {
        let mut counter = FrameCounter::new(Some(1 << 20));
        let err = counter.feed(&[1, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.size, u64::from(u32::MAX));
        let mut unlimited = FrameCounter::new(None);
        assert_eq!(unlimited.feed(&[1, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]), Ok(0));
    }

    #[test]
    fn prefix_length_needs_five_bytes() {
        assert_eq!(prefix_length(&[0, 0, 0, 1]), None);
        assert_eq!(prefix_length(&[0, 0, 0, 1, 2]), Some(258));
        assert_eq!(prefix_length(&[1, 0, 1, 0, 0, 9]), Some(65536));
    }
}
