//! Secret key material: zeroized on drop, never printed.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::Result;
use crate::id::random_bytes;

/// A 32-byte secret (a store master key, a channel key, a sub-key).
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        let mut b = [0u8; 32];
        random_bytes(&mut b)?;
        Ok(SecretKey(b))
    }

    /// Wrap existing bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        SecretKey(b)
    }

    /// The raw bytes; callers must not copy them anywhere that outlives the key.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A passphrase, zeroized on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(String);

impl Passphrase {
    /// Wrap a passphrase.
    pub fn new(s: impl Into<String>) -> Self {
        Passphrase(s.into())
    }

    /// The passphrase bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<&str> for Passphrase {
    fn from(s: &str) -> Self {
        Passphrase::new(s)
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secrets() {
        let k = SecretKey::from_bytes([0xab; 32]);
        assert!(!format!("{k:?}").contains("ab"));
        let p = Passphrase::new("hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
