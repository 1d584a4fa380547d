//! Just enough of the TLS record layer (RFC 8446 §5.1, RFC 5246 §6.2) to tell,
//! from the bytes a LAN client sends, whether a connection is TLS and when its
//! handshake is over. Pure; never decrypts or keeps the bytes.
//!
//! A connection is TLS when its first record is a handshake record (type
//! `0x16`, version `0x03 xx`) whose first message is a ClientHello (`0x01`).
//! The handshake is over, for our purpose, when the client starts its first
//! `application_data` record (`0x17`): in TLS 1.3 that record carries the
//! client's encrypted Finished, after the server's whole flight has passed; in
//! TLS 1.2 the client sends application data only after the server's Finished.
//! Everything a waypoint could read in the clear (ClientHello, ServerHello,
//! TLS 1.2 certificates) has crossed the direct path by then.

/// `handshake` content type (RFC 8446 §5.1).
const HANDSHAKE: u8 = 0x16;
/// `application_data` content type.
const APPLICATION_DATA: u8 = 0x17;
/// `change_cipher_spec` content type.
const CHANGE_CIPHER_SPEC: u8 = 0x14;
/// `alert` content type.
const ALERT: u8 = 0x15;
/// `client_hello` handshake message type (RFC 8446 §4).
const CLIENT_HELLO: u8 = 0x01;
/// Largest record body: 2^14 plus the 2048 bytes RFC 5246 §6.2.3 allows for
/// ciphertext expansion.
const MAX_RECORD: usize = (1 << 14) + 2048;
/// Give up on a handshake whose records go on past this many client bytes.
pub const MAX_HANDSHAKE: usize = 64 * 1024;

/// What the client's bytes so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided: feed more bytes.
    Pending,
    /// The first bytes are not a TLS ClientHello.
    Plaintext,
    /// TLS, and the handshake has passed.
    HandshakeDone,
    /// It started as TLS but broke the record framing, or the handshake ran
    /// past [`MAX_HANDSHAKE`] bytes: treat as never safe to detour.
    Malformed(&'static str),
}

/// Follows the record headers of one client→server byte stream.
#[derive(Debug, Clone)]
pub struct TlsWatch {
    /// Bytes of the current record header (plus the handshake type byte of
    /// the first record) collected so far.
    head: [u8; 6],
    have: usize,
    /// Body bytes of the current record still to skip.
    skip: usize,
    /// Total bytes seen.
    seen: usize,
    first: bool,
    verdict: Verdict,
}

impl Default for TlsWatch {
    fn default() -> Self {
        TlsWatch {
            head: [0; 6],
            have: 0,
            skip: 0,
            seen: 0,
            first: true,
            verdict: Verdict::Pending,
        }
    }
}

impl TlsWatch {
    /// Takes the next bytes of the stream; returns the verdict so far. Once the
    /// verdict is not [`Verdict::Pending`] it never changes.
    pub fn feed(&mut self, mut data: &[u8]) -> Verdict {
        while self.verdict == Verdict::Pending && !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                self.seen = self.seen.saturating_add(n);
                data = &data[n..];
                continue;
            }
            // A record starting this far in: the handshake is not ending.
            // (Checked at record starts only, so the verdict does not depend
            // on how the stream was cut into reads.)
            if self.have == 0 && self.seen >= MAX_HANDSHAKE {
                self.verdict = Verdict::Malformed("handshake longer than 64 KiB");
                break;
            }
            // The first record's header is read together with the handshake
            // type that follows it.
            let want = if self.first { 6 } else { 5 };
            let n = (want - self.have).min(data.len());
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            self.seen = self.seen.saturating_add(n);
            data = &data[n..];
            if self.first && self.have >= 1 && self.head[0] != HANDSHAKE {
                self.verdict = Verdict::Plaintext;
                break;
            }
            if self.first && self.have >= 2 && self.head[1] != 0x03 {
                self.verdict = Verdict::Plaintext;
                break;
            }
            if self.have < want {
                break;
            }
            self.verdict = self.record();
            self.have = 0;
        }
        self.verdict
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// A complete record header is in `head`.
    fn record(&mut self) -> Verdict {
        let h = &self.head;
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if self.first {
            self.first = false;
            if h[5] != CLIENT_HELLO || len == 0 {
                return Verdict::Plaintext;
            }
            if len > MAX_RECORD {
                return Verdict::Malformed("first record too long");
            }
            // The handshake type byte was part of the body.
            self.skip = len - 1;
            return Verdict::Pending;
        }
        if h[1] != 0x03 {
            return Verdict::Malformed("record version is not 3.x");
        }
        if len > MAX_RECORD {
            return Verdict::Malformed("record too long");
        }
        match h[0] {
            APPLICATION_DATA => Verdict::HandshakeDone,
            HANDSHAKE | CHANGE_CIPHER_SPEC | ALERT => {
                self.skip = len;
                Verdict::Pending
            }
            _ => Verdict::Malformed("unknown record type"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `ty` with a body of `len` bytes (first byte `first`).
    fn record(ty: u8, len: usize, first: u8) -> Vec<u8> {
        let mut r = vec![ty, 0x03, 0x01];
        r.extend_from_slice(&(len as u16).to_be_bytes());
        r.push(first);
        r.resize(5 + len, 0xaa);
        r
    }

    /// A TLS 1.3 client's bytes: ClientHello, then (after the server's
    /// flight) a compatibility ChangeCipherSpec and the encrypted Finished.
    fn tls13() -> (Vec<u8>, usize) {
        let mut s = record(HANDSHAKE, 512, CLIENT_HELLO);
        s.extend(record(CHANGE_CIPHER_SPEC, 1, 1));
        let done_at = s.len();
        s.extend(record(APPLICATION_DATA, 53, 0x42));
        s.extend(record(APPLICATION_DATA, 200, 0x42));
        (s, done_at)
    }

    #[test]
    fn tls_handshake_done_at_first_application_data() {
        let (s, done_at) = tls13();
        let mut w = TlsWatch::default();
        assert_eq!(w.feed(&s[..done_at]), Verdict::Pending);
        assert_eq!(w.feed(&s[done_at..done_at + 4]), Verdict::Pending);
        assert_eq!(w.feed(&s[done_at + 4..]), Verdict::HandshakeDone);
        assert_eq!(w.feed(b"GET / HTTP/1.1\r\n"), Verdict::HandshakeDone);
    }

    #[test]
    fn byte_by_byte_gives_the_same_answer() {
        let (s, done_at) = tls13();
        let mut w = TlsWatch::default();
        for (i, b) in s.iter().enumerate() {
            let v = w.feed(&[*b]);
            if i < done_at + 4 {
                assert_eq!(v, Verdict::Pending, "byte {i}");
            } else {
                assert_eq!(v, Verdict::HandshakeDone, "byte {i}");
            }
        }
    }

    #[test]
    fn plaintext_is_recognized_from_the_first_bytes() {
        for s in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"SSH-2.0-OpenSSH_9.2\r\n",
            &[0x16, 0x02, 0, 0, 0][..],
            &record(HANDSHAKE, 40, 0x02)[..], // not a ClientHello
            &record(APPLICATION_DATA, 40, 0)[..],
        ] {
            assert_eq!(TlsWatch::default().feed(s), Verdict::Plaintext, "{s:?}");
        }
        let mut w = TlsWatch::default();
        assert_eq!(w.feed(&[0x16]), Verdict::Pending);
        assert_eq!(w.feed(&[0x03, 0x01, 0x00]), Verdict::Pending);
        assert_eq!(w.feed(&[0x10, 0x01]), Verdict::Pending, "a ClientHello");
    }

    #[test]
    fn broken_framing_and_endless_handshakes_are_never_safe() {
        let mut s = record(HANDSHAKE, 100, CLIENT_HELLO);
        s.extend([0x99, 0x03, 0x03, 0, 5]);
        assert_eq!(
            TlsWatch::default().feed(&s),
            Verdict::Malformed("unknown record type")
        );
        let mut s = record(HANDSHAKE, 100, CLIENT_HELLO);
        s.extend([HANDSHAKE, 0x03, 0x03, 0xff, 0xff]);
        assert_eq!(
            TlsWatch::default().feed(&s),
            Verdict::Malformed("record too long")
        );
        let mut w = TlsWatch::default();
        let mut v = w.feed(&record(HANDSHAKE, 100, CLIENT_HELLO));
        while v == Verdict::Pending {
            v = w.feed(&record(HANDSHAKE, 16_000, 0x0b));
        }
        assert_eq!(v, Verdict::Malformed("handshake longer than 64 KiB"));
    }
}
