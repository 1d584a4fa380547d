//! WireGuard keys of members, for VPN tunnels.
//!
//! A member's WireGuard key pair is derived from its member key (one secret
//! file to keep), but is a separate key: the X25519 secret is
//! SHA-512(`dcol/wireguard/v1\0` ‖ Ed25519 seed), first 32 bytes, clamped — not
//! the Ed25519 scalar itself, so no key is used both to sign and for
//! Diffie-Hellman. The collective admin cannot derive it from the member's
//! public key, so `dcol key generate` writes the WireGuard public key next to
//! the member's (`FILE.wgpub`, base64 as `wg` prints it) and `dcol collective
//! admit --wg-pub` puts it into the certificate: a waypoint then knows whom a
//! WireGuard peer belongs to.

use sha2::{Digest, Sha512};

use super::{ParseError, SecretKey};

const DOMAIN: &[u8] = b"dcol/wireguard/v1\0";

/// A WireGuard (X25519) key, public or secret.
pub type WgKey = [u8; 32];

/// The member's WireGuard secret key (clamped X25519 scalar).
pub fn secret(member: &SecretKey) -> WgKey {
    let mut h = Sha512::new();
    h.update(DOMAIN);
    h.update(member.seed());
    let d = h.finalize();
    let mut k = [0u8; 32];
    k.copy_from_slice(&d[..32]);
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

/// The public key of a WireGuard secret key.
pub fn public(secret: &WgKey) -> WgKey {
    curve25519_dalek::MontgomeryPoint::mul_base_clamped(*secret).to_bytes()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 (standard alphabet, padded), as `wg` prints keys.
pub fn to_base64(k: &WgKey) -> String {
    let mut out = String::with_capacity(44);
    for chunk in k.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Parses a base64 WireGuard key (44 characters ending in `=`).
pub fn from_base64(s: &str) -> Result<WgKey, ParseError> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() != 44 || b[43] != b'=' {
        return Err(ParseError::Length {
            expected: "a 44-character base64 WireGuard key",
            got: b.len(),
        });
    }
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(33);
    for &c in &b[..43] {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .ok_or(ParseError::Base64(c as char))?;
        bits = (bits << 6) | v as u32;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    if bits != 0 {
        return Err(ParseError::NonCanonical);
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&out[..32]);
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_stable_and_distinct_from_the_signing_key() {
        let m = SecretKey::from_seed([7; 32]);
        let s = secret(&m);
        assert_eq!(s, secret(&m));
        assert_eq!(s[0] & 7, 0);
        assert_eq!(s[31] & 0xc0, 0x40);
        assert_ne!(public(&s), m.public().0);
        assert_ne!(secret(&SecretKey::from_seed([8; 32])), s);
    }

    #[test]
    fn x25519_agrees_both_ways() {
        // Diffie-Hellman with two derived keys gives one shared secret: the
        // keys are real X25519 keys.
        let (a, b) = (
            secret(&SecretKey::from_seed([1; 32])),
            secret(&SecretKey::from_seed([2; 32])),
        );
        let ab = curve25519_dalek::MontgomeryPoint(public(&b)).mul_clamped(a);
        let ba = curve25519_dalek::MontgomeryPoint(public(&a)).mul_clamped(b);
        assert_eq!(ab, ba);
    }

    #[test]
    fn base64_round_trip_and_fixture() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let sk: WgKey =
            hex_literal::hex!("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let pk = public(&sk);
        assert_eq!(
            pk,
            hex_literal::hex!("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        let s = to_base64(&pk);
        assert_eq!(s, "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=");
        assert_eq!(from_base64(&s).unwrap(), pk);
        for bad in [
            "",
            "hSDw",
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTm*=",
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmp=",
        ] {
            assert!(from_base64(bad).is_err(), "{bad}");
        }
    }
}
