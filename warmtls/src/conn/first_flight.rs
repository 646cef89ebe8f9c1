//! The record-size limit on a client's first flight, which rustls does not
//! enforce for plaintext records (it accepts up to 2^14 + 2048 bytes and then
//! judges the contents, so an oversized ClientHello record is answered with
//! whatever its bytes happen to break, not record_overflow).
//!
//! RFC 8446 §5.1 and RFC 5246 §6.2.1: a plaintext record carries at most 2^14
//! bytes, and one that is longer ends the connection with record_overflow; an
//! encrypted record (TLS 1.3 early data) at most 2^14 + 256. Until the server
//! has sent anything every record from the client is plaintext, except early
//! data, and our alert can go in the clear, so this is checked only then.

/// Largest plaintext record body.
const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest TLS 1.3 ciphertext record body (early data).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const APPLICATION_DATA: u8 = 23;

/// A fatal alert record, in the clear (before the server has said anything).
pub fn fatal_alert(desc: rustls::AlertDescription) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(desc)]
}

/// Where the scan is in the client's record stream.
#[derive(Debug, Default)]
pub struct FirstFlight {
    header: [u8; 5],
    have: usize,
    body_left: usize,
}

impl FirstFlight {
    /// Scan the next received bytes; `false` if a record header announces more
    /// than its type may carry.
    pub fn check(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 5 {
                return true;
            }
            self.have = 0;
            let len = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
            let max = if self.header[0] == APPLICATION_DATA {
                MAX_CIPHERTEXT
            } else {
                MAX_PLAINTEXT
            };
            if len > max {
                return false;
            }
            self.body_left = len;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(typ: u8, len: usize) -> Vec<u8> {
        let mut r = vec![typ, 3, 3];
        r.extend_from_slice(&(len as u16).to_be_bytes());
        r.resize(5 + len, 0);
        r
    }

    #[test]
    fn limits_hold_across_arbitrary_splits() {
        let mut ok = record(22, MAX_PLAINTEXT);
        ok.extend(record(23, MAX_CIPHERTEXT));
        ok.extend(record(22, 1));
        for split in [1, 2, 3, 5, 7, 4096, ok.len()] {
            let mut f = FirstFlight::default();
            assert!(ok.chunks(split).all(|c| f.check(c)), "split {split}");
        }
        for bad in [
            record(22, MAX_PLAINTEXT + 1),
            record(23, MAX_CIPHERTEXT + 1),
        ] {
            let mut stream = record(22, 300);
            stream.extend(bad);
            for split in [1, 3, 4096] {
                let mut f = FirstFlight::default();
                assert!(!stream.chunks(split).all(|c| f.check(c)), "split {split}");
            }
        }
    }
}
