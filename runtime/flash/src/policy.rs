//! Which images a device takes: those signed by one of its trusted keys (`SLOT_DIR/flash.pub`,
//! one key per line, so a fleet can rotate keys), and none older than the image it serves
//! unless its operator allows it (`SLOT_DIR/allow-downgrade`).

use ed25519_dalek::{Signature, VerifyingKey};
use ember_core::flash::signed_message;
use ember_core::protocol;

/// The file whose presence in the slot directory lets the device take an older image.
pub const ALLOW_DOWNGRADE_FILE: &str = "allow-downgrade";

/// What is wrong with a key file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// A line that is not a key, a comment or blank.
    #[error("line {line} is not an ed25519 public key (64 hex digits): {reason}")]
    BadLine {
        /// Its number, from 1.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Only comments and blank lines.
    #[error("it holds no key (one ed25519 public key of 64 hex digits per line)")]
    NoKey,
}

/// The public keys a device takes signatures from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    /// Reads a key file's text: one key (64 hex digits) per line; blank lines and `#` comments
    /// are ignored.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_text = line.trim();
            if line_text.is_empty() || line_text.starts_with('#') {
                continue;
            }
            let bad = |reason| KeyFileError::BadLine {
                line: index + 1,
                reason,
            };
            let bytes = crate::decode_hex(line_text).ok_or_else(|| bad("not hex"))?;
            let bytes: [u8; 32] = bytes
                .try_into()
                .map_err(|_| bad("not 32 bytes (64 hex digits)"))?;
            keys.push(VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a point of Ed25519"))?);
        }
        if keys.is_empty() {
            return Err(KeyFileError::NoKey);
        }
        Ok(TrustedKeys(keys))
    }

    /// The keys, in the file's order.
    pub fn keys(&self) -> &[VerifyingKey] {
        &self.0
    }

    /// Whether `signature` is one of these keys' signature of the image with this SHA-256 and
    /// length ([`signed_message`]).
    pub fn verify(
        &self,
        sha256: &[u8; 32],
        image_len: u64,
        signature: &protocol::Signature,
    ) -> bool {
        let message = signed_message(sha256, image_len);
        let signature = Signature::from_bytes(&signature.to_bytes());
        self.0
            .iter()
            .any(|key| key.verify_strict(&message, &signature).is_ok())
    }
}

/// An image older than the one the device serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "image version {image} is older than the active image's version {active} (to take it, \
     create {ALLOW_DOWNGRADE_FILE} in the device's slot directory)"
)]
pub struct Downgrade {
    /// The offered image's version.
    pub image: u32,
    /// The active image's version.
    pub active: u32,
}

/// Refuses an image whose version is lower than the active image's, unless `allow_downgrade`.
/// The same version is taken (flashing the same build again, or an image made before versions).
pub fn check_version(image: u32, active: u32, allow_downgrade: bool) -> Result<(), Downgrade> {
    if image < active && !allow_downgrade {
        return Err(Downgrade { image, active });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn an_older_image_is_refused_unless_allowed() {
        assert_eq!(
            check_version(3, 5, false),
            Err(Downgrade {
                image: 3,
                active: 5
            })
        );
        assert_eq!(
            Downgrade {
                image: 3,
                active: 5
            }
            .to_string(),
            "image version 3 is older than the active image's version 5 (to take it, create \
             allow-downgrade in the device's slot directory)"
        );
        assert_eq!(check_version(5, 5, false), Ok(()));
        assert_eq!(check_version(6, 5, false), Ok(()));
        assert_eq!(check_version(0, 0, false), Ok(()));
        assert_eq!(check_version(3, 5, true), Ok(()));
        assert_eq!(check_version(0, u32::MAX, true), Ok(()));
    }

    #[test]
    fn an_image_signed_by_any_trusted_key_verifies() {
        let old = SigningKey::from_bytes(&[1; 32]);
        let new = SigningKey::from_bytes(&[2; 32]);
        let stranger = SigningKey::from_bytes(&[3; 32]);
        let text = format!(
            "# the fleet's keys\n{}\n\n  # the new one, from 2026-12\n  {}  \n",
            hex(old.verifying_key().as_bytes()),
            hex(new.verifying_key().as_bytes()).to_uppercase()
        );
        let keys = TrustedKeys::parse(&text).unwrap();
        assert_eq!(
            keys.keys(),
            [old.verifying_key(), new.verifying_key()].as_slice()
        );
        let sha256 = [7; 32];
        let sign = |key: &SigningKey, len| {
            protocol::Signature::from_bytes(&key.sign(&signed_message(&sha256, len)).to_bytes())
        };
        assert!(keys.verify(&sha256, 100, &sign(&old, 100)));
        assert!(keys.verify(&sha256, 100, &sign(&new, 100)));
        assert!(!keys.verify(&sha256, 100, &sign(&stranger, 100)));
        assert!(!keys.verify(&sha256, 101, &sign(&new, 100)));
    }

    #[test]
    fn a_bad_line_is_named() {
        let key = hex(SigningKey::from_bytes(&[1; 32]).verifying_key().as_bytes());
        let error = |text: &str| TrustedKeys::parse(text).unwrap_err();
        assert_eq!(
            error(&format!("# keys\n{key}\n{key}x\n")),
            KeyFileError::BadLine {
                line: 3,
                reason: "not hex"
            }
        );
        assert_eq!(
            error(&format!("{key}\n\n{}\n", &key[..62])),
            KeyFileError::BadLine {
                line: 3,
                reason: "not 32 bytes (64 hex digits)"
            }
        );
        // Two keys on one line are not one key.
        assert_eq!(
            error(&format!("{key}{key}")),
            KeyFileError::BadLine {
                line: 1,
                reason: "not 32 bytes (64 hex digits)"
            }
        );
        assert_eq!(error("# no keys yet\n\n"), KeyFileError::NoKey);
        assert_eq!(
            error("# keys\nnot a key\n").to_string(),
            "line 2 is not an ed25519 public key (64 hex digits): not hex"
        );
    }
}
