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

/// A member's short, human-readable name (`lo keygen --name alice`): 1 to
/// [`MemberName::MAX`] ASCII letters, digits, `-`, `_` or `.`. A host asserts its
/// own name, nobody vouches for it, so it is always shown next to the prefix of the
/// key that is authenticated: `alice (728c838b)`. Stored inline so that the types
/// carrying it (a group's member list) stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberName {
    len: u8,
    bytes: [u8; MemberName::MAX],
}

impl MemberName {
    /// The longest name, in bytes.
    pub const MAX: usize = 16;

    /// The name as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize])
            .expect("a member name is ASCII, checked when it was made")
    }
}

/// A string that cannot be a member name.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a member name: use 1 to 16 ASCII letters, digits, `-`, `_` or `.` (like alice)"
)]
pub struct NameParseError(pub String);

impl FromStr for MemberName {
    type Err = NameParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= MemberName::MAX
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(NameParseError(s.to_string()));
        }
        let mut bytes = [0u8; MemberName::MAX];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(MemberName {
            len: s.len() as u8,
            bytes,
        })
    }
}

impl fmt::Display for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Serialize for MemberName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MemberName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a member is shown to people: its name (if it has one) and the first 8 hex
/// digits of its key, `alice (728c838b)`, or the digits alone, `728c838b`.
pub fn member_label(key: &PublicKey, name: Option<MemberName>) -> String {
    match name {
        Some(name) => format!("{name} ({})", key.short()),
        None => key.short(),
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
    /// The file's `name` line is not a valid member name.
    #[error("key file {path}: {source} (fix the `name` line)")]
    BadName {
        /// The file.
        path: PathBuf,
        /// What is wrong with the name.
        source: NameParseError,
    },
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
    name: Option<MemberName>,
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
            name: None,
        }
    }

    /// The same key under a short name (shown to other members with the key prefix).
    pub fn with_name(mut self, name: Option<MemberName>) -> Self {
        self.name = name;
        self
    }

    /// The identity's short name, if it has one.
    pub fn name(&self) -> Option<MemberName> {
        self.name
    }

    /// How this identity is shown: `alice (728c838b)` or `728c838b`.
    pub fn label(&self) -> String {
        member_label(&self.public(), self.name)
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
        let mut text = format!(
            "{KEY_FILE_HEADER}\n{}\npublic {}\n",
            hex::encode(self.key.to_bytes()),
            self.public()
        );
        if let Some(name) = self.name {
            text.push_str(&format!("name {name}\n"));
        }
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
        // Optional lines after the secret: `public KEY` (informative) and
        // `name NAME` (added by `lo keygen --name`, or by hand).
        let name = lines
            .filter_map(|l| l.strip_prefix("name "))
            .next_back()
            .map(|n| {
                n.trim().parse().map_err(|source| KeyFileError::BadName {
                    path: path.to_path_buf(),
                    source,
                })
            })
            .transpose()?;
        Ok(Identity::from_secret(secret).with_name(name))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.label())
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
        assert_eq!(Identity::load(&path).unwrap().name(), None);
        assert!(matches!(id.save(&path), Err(KeyFileError::Exists(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(KeyFileError::Permissions(_))
        ));
    }

    #[test]
    fn names_are_kept_in_key_files_and_bad_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.key");
        let name: MemberName = "alice".parse().unwrap();
        let id = Identity::generate().with_name(Some(name));
        id.save(&path).unwrap();
        let loaded = Identity::load(&path).unwrap();
        assert_eq!(loaded.name(), Some(name));
        assert_eq!(loaded.label(), format!("alice ({})", id.public().short()));

        for bad in ["", "has space", "seventeen-letters", "émile", "a/b"] {
            assert!(bad.parse::<MemberName>().is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            "a.b-c_D9".parse::<MemberName>().unwrap().as_str(),
            "a.b-c_D9"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let edited = text.replace("name alice", "name not a name");
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        file.write_all(edited.as_bytes()).unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::BadName { .. }), "{err}");
        assert!(err.to_string().contains("not a name"), "{err}");
    }

    #[test]
    fn names_survive_postcard_and_garbage_names_do_not_decode() {
        let name: MemberName = "bob".parse().unwrap();
        let bytes = postcard::to_allocvec(&Some(name)).unwrap();
        assert_eq!(
            postcard::from_bytes::<Option<MemberName>>(&bytes).unwrap(),
            Some(name)
        );
        let bad = postcard::to_allocvec(&Some("no spaces allowed")).unwrap();
        assert!(postcard::from_bytes::<Option<MemberName>>(&bad).is_err());
    }

    #[test]
    fn public_keys_parse_from_hex() {
        let id = Identity::generate();
        let text = id.public().to_string();
        assert_eq!(text.parse::<PublicKey>().unwrap(), id.public());
        assert!("abc".parse::<PublicKey>().is_err());
    }
}
