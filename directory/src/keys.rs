//! ed25519 identities: the keys that own zones, sign records and identify hosts.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// An ed25519 public key (32 bytes), shown as lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Check `signature` over `message` (strict ed25519: rejects malleable and
    /// small-order forms).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &Signature::from_bytes(&signature))
            .is_ok()
    }

    /// The first 8 hex digits, for compact display.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

/// A public key string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a public key: expected 64 hex digits (as printed by `lo keygen`)")]
pub struct KeyParseError(pub String);

impl FromStr for PublicKey {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s.trim()).map_err(|_| KeyParseError(s.to_string()))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyParseError(s.to_string()))?;
        Ok(PublicKey(bytes))
    }
}

/// Problems with a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file exists already (we never overwrite a secret key).
    #[error(
        "key file {0} already exists; refusing to overwrite a secret key (choose another --out)"
    )]
    Exists(PathBuf),
    /// The file is not one of ours.
    #[error("key file {0} is not a liveobjects secret key file")]
    Malformed(PathBuf),
    /// Other users can read the file.
    #[error(
        "key file {0} is readable by other users; fix with `chmod 600 {0}` (we refuse to use it)"
    )]
    Permissions(PathBuf),
}

const KEY_FILE_HEADER: &str = "liveobjects-secret-key-v1";

/// A secret ed25519 key with its public half.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// A new random identity from the operating system's randomness.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system's random source failed");
        Identity::from_secret(secret)
    }

    /// An identity from its 32-byte secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Identity {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// The secret key as PKCS#8 DER (for TLS certificates bound to this identity).
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        self.key
            .to_pkcs8_der()
            .expect("an ed25519 key always encodes")
            .as_bytes()
            .to_vec()
    }

    /// Sign `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).to_bytes().to_vec()
    }

    /// Write the secret to a new file readable only by its owner (mode 0600), creating
    /// parent directories (mode 0700). Never overwrites.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyFileError::Exists(path.to_path_buf())
                } else {
                    io(e)
                }
            })?;
        let text = format!(
            "{KEY_FILE_HEADER}\n{}\npublic {}\n",
            hex::encode(self.key.to_bytes()),
            self.public()
        );
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Read a key file written by [`save`](Identity::save). Refuses files that other
    /// users can read.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(KeyFileError::Permissions(path.to_path_buf()));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(KeyFileError::Malformed(path.to_path_buf()));
        }
        let secret = lines
            .next()
            .and_then(|l| hex::decode(l.trim()).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| KeyFileError::Malformed(path.to_path_buf()))?;
        Ok(Identity::from_secret(secret))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.public().short())
    }
}

/// Where `lo` keeps the user's identity: `$XDG_CONFIG_HOME/liveobjects/identity.key`
/// or `~/.config/liveobjects/identity.key`.
pub fn default_identity_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("liveobjects").join("identity.key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_signed_message_and_key() {
        let a = Identity::generate();
        let b = Identity::generate();
        let sig = a.sign(b"hello");
        assert!(a.public().verify(b"hello", &sig));
        assert!(!a.public().verify(b"hellO", &sig));
        assert!(!b.public().verify(b"hello", &sig));
        assert!(!a.public().verify(b"hello", &sig[..63]));
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/id.key");
        let id = Identity::generate();
        id.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Identity::load(&path).unwrap().public(), id.public());
        assert!(matches!(id.save(&path), Err(KeyFileError::Exists(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(KeyFileError::Permissions(_))
        ));
    }

    #[test]
    fn public_keys_parse_from_hex() {
        let id = Identity::generate();
        let text = id.public().to_string();
        assert_eq!(text.parse::<PublicKey>().unwrap(), id.public());
        assert!("abc".parse::<PublicKey>().is_err());
    }
}
