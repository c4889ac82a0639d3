//! TOTP (RFC 6238) as Google Authenticator does it: HMAC-SHA1, 6 digits, 30 s steps.
//! `verify` returns the matched time step so the caller can refuse a code that was
//! already used (the store keeps the last accepted step per user).

use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;
use subtle::ConstantTimeEq;

pub const STEP_SECONDS: i64 = 30;
pub const DIGITS: u32 = 6;
/// Accept the previous and next step too: phones and servers drift by a few seconds.
pub const SKEW_STEPS: i64 = 1;

/// A new 160-bit secret, base32 without padding (what authenticator apps expect).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    BASE32_NOPAD.encode(&bytes)
}

/// The `otpauth://` URI an authenticator app scans (as a QR code) to enrol.
pub fn provisioning_uri(secret: &str, issuer: &str, account: &str) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        encode(issuer),
        encode(account),
        encode(issuer)
    )
}

/// The code for one time step (HOTP of RFC 4226 with the step as counter).
pub fn code_at_step(secret: &str, step: i64) -> Option<String> {
    let key = BASE32_NOPAD.decode(secret.as_bytes()).ok()?;
    let mut mac = Hmac::<Sha1>::new_from_slice(&key).ok()?;
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[19] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    Some(format!(
        "{:0width$}",
        binary % 10u32.pow(DIGITS),
        width = DIGITS as usize
    ))
}

pub fn step_at(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(STEP_SECONDS)
}

/// The step whose code matches `code` within the allowed skew, if any.
pub fn verify(secret: &str, code: &str, unix_seconds: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_at(unix_seconds);
    (now - SKEW_STEPS..=now + SKEW_STEPS).find(|&step| {
        code_at_step(secret, step)
            .is_some_and(|expected| bool::from(expected.as_bytes().ct_eq(code.as_bytes())))
    })
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA1 column (secret "12345678901234567890"), truncated to 6 digits.
    #[test]
    fn rfc6238_vectors() {
        let secret = BASE32_NOPAD.encode(b"12345678901234567890");
        for (t, expected) in [
            (59, "287082"),
            (1111111109, "081804"),
            (1111111111, "050471"),
            (1234567890, "005924"),
            (2000000000, "279037"),
        ] {
            assert_eq!(
                code_at_step(&secret, step_at(t)).unwrap(),
                expected,
                "t={t}"
            );
        }
    }

    #[test]
    fn verify_with_skew() {
        let secret = generate_secret();
        let now = 1_700_000_000;
        let code = code_at_step(&secret, step_at(now)).unwrap();
        assert_eq!(verify(&secret, &code, now), Some(step_at(now)));
        assert_eq!(verify(&secret, &code, now + 30), Some(step_at(now)));
        assert_eq!(verify(&secret, &code, now + 95), None);
        assert_eq!(verify(&secret, "12345", now), None);
        assert_eq!(verify(&secret, "abcdef", now), None);
    }

    #[test]
    fn uri_is_escaped() {
        let uri = provisioning_uri("ABC", "Corral", "a b@example.com");
        assert!(
            uri.starts_with("otpauth://totp/Corral:a%20b@example.com?secret=ABC&issuer=Corral")
        );
    }
}
