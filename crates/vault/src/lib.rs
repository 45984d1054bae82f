//! The cmcKey vault: envelope encryption of each branch's control-unit key.
//!
//! The cmcKey lets anyone sign receipts in a taxpayer's name, so it is never stored as it
//! is. A **master key** (from `USHURU_MASTER_KEY`, a key file, or any [`MasterKey`]
//! provider such as a KMS) wraps one **data key per branch**; the data key seals the
//! branch's cmcKey. Both seals are AES-256-GCM with a random 96-bit nonce, and their
//! associated data binds the tenant, the branch and the key versions: a sealed value
//! copied onto another branch's row, or presented under another version, does not open.
//! What is stored is ciphertext, nonce and versions ([`SealedCmcKey`]); the plaintext
//! exists only while [`Vault::open_cmc_key`]'s answer lives, and is zeroized when it drops.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use zeroize::Zeroizing;

/// AES-256: 32-byte keys.
pub const KEY_LEN: usize = 32;
/// GCM's 96-bit nonce.
pub const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the master key is not usable: {0}")]
    MasterKey(String),
    #[error("the master key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error(
        "a sealed key does not open: it was sealed under another master key, for another \
         branch or version, or it was altered"
    )]
    DoesNotOpen,
    #[error(
        "the data key was wrapped by master key version {found}; this master key is version {have}"
    )]
    OtherMasterVersion { found: u32, have: u32 },
    #[error("the system's random source failed: {0}")]
    Random(String),
}

pub type Result<T> = std::result::Result<T, VaultError>;

/// Whose secret it is: bound into every seal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    pub tenant: i64,
    pub branch: i64,
}

/// An AES-256-GCM seal as stored: the nonce and the ciphertext (with its tag).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.ciphertext.len())
    }
}

/// A branch's data key as stored: wrapped by the master key of `master_version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedDataKey {
    pub version: u32,
    pub master_version: u32,
    pub wrapped: Sealed,
}

/// A branch's cmcKey as stored: sealed by its data key (of `data_key.version`), with that
/// data key wrapped beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedCmcKey {
    pub data_key: WrappedDataKey,
    pub sealed: Sealed,
}

/// A plain 256-bit key, zeroized when dropped, never printed.
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    /// A fresh key from the system's random source.
    pub fn generate() -> Result<Self> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut()).map_err(|e| VaultError::Random(e.to_string()))?;
        Ok(SecretKey(key))
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(SecretKey(Zeroizing::new(array)))
    }

    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| VaultError::Random(e.to_string()))?;
        let cipher = Aes256Gcm::new_from_slice(self.0.as_ref())
            .map_err(|_| VaultError::MasterKey("not 32 bytes".into()))?;
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| VaultError::MasterKey("encryption failed".into()))?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.nonce.len() != NONCE_LEN {
            return Err(VaultError::DoesNotOpen);
        }
        let cipher =
            Aes256Gcm::new_from_slice(self.0.as_ref()).map_err(|_| VaultError::DoesNotOpen)?;
        cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::DoesNotOpen)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Wraps and unwraps data keys: a local key ([`LocalMasterKey`]) or a KMS.
pub trait MasterKey: Send + Sync {
    /// The version new wraps are made under.
    fn version(&self) -> u32;
    fn wrap(&self, data_key: &SecretKey, aad: &[u8]) -> Result<Sealed>;
    fn unwrap(&self, master_version: u32, wrapped: &Sealed, aad: &[u8]) -> Result<SecretKey>;
}

/// A master key held in this process, read from `USHURU_MASTER_KEY` or a key file.
pub struct LocalMasterKey {
    version: u32,
    key: SecretKey,
}

impl fmt::Debug for LocalMasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalMasterKey")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl LocalMasterKey {
    /// A 32-byte key written as standard base64 (44 characters) or hex (64).
    pub fn from_text(text: &str, version: u32) -> Result<Self> {
        let text = Zeroizing::new(text.trim().to_owned());
        // 64 hex digits are also valid base64 (of 48 bytes): hex is tried first at that length.
        let is_hex = text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit());
        let decoded = if is_hex {
            data_encoding::HEXLOWER_PERMISSIVE.decode(text.as_bytes())
        } else {
            data_encoding::BASE64.decode(text.as_bytes())
        };
        let bytes = Zeroizing::new(decoded.map_err(|_| {
            VaultError::MasterKey(
                "expected 32 bytes as base64 (44 characters) or hex (64 characters)".into(),
            )
        })?);
        let key = SecretKey::from_slice(&bytes).ok_or_else(|| {
            VaultError::MasterKey(format!("expected 32 bytes, got {}", bytes.len()))
        })?;
        Ok(LocalMasterKey { version, key })
    }

    /// Reads a key file (the key as base64 or hex, on one line).
    pub fn from_file(path: &Path, version: u32) -> Result<Self> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| VaultError::KeyFile {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?,
            );
        Self::from_text(&text, version).map_err(|e| VaultError::KeyFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The key file at `path`, created with a new random key (readable by its owner only)
    /// if there is none. The boolean says whether it was created now.
    pub fn load_or_generate(path: &Path, version: u32) -> Result<(Self, bool)> {
        // An existing file that does not read is an error: replacing it would orphan every
        // key sealed under it.
        if path.exists() {
            return Self::from_file(path, version).map(|key| (key, false));
        }
        let key = SecretKey::generate()?;
        let text = Zeroizing::new(format!(
            "{}\n",
            data_encoding::BASE64.encode(key.0.as_ref())
        ));
        let file_error = |e: std::io::Error| VaultError::KeyFile {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(file_error)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(file_error)?;
        file.sync_all().map_err(file_error)?;
        Ok((LocalMasterKey { version, key }, true))
    }
}

impl MasterKey for LocalMasterKey {
    fn version(&self) -> u32 {
        self.version
    }

    fn wrap(&self, data_key: &SecretKey, aad: &[u8]) -> Result<Sealed> {
        self.key.seal(data_key.0.as_ref(), aad)
    }

    fn unwrap(&self, master_version: u32, wrapped: &Sealed, aad: &[u8]) -> Result<SecretKey> {
        if master_version != self.version {
            return Err(VaultError::OtherMasterVersion {
                found: master_version,
                have: self.version,
            });
        }
        let bytes = self.key.open(wrapped, aad)?;
        SecretKey::from_slice(&bytes).ok_or(VaultError::DoesNotOpen)
    }
}

fn data_key_aad(binding: Binding, version: u32, master_version: u32) -> Vec<u8> {
    format!(
        "ushuru/data-key/v1|tenant={}|branch={}|version={version}|master={master_version}",
        binding.tenant, binding.branch
    )
    .into_bytes()
}

fn cmc_key_aad(binding: Binding, data_key_version: u32) -> Vec<u8> {
    format!(
        "ushuru/cmc-key/v1|tenant={}|branch={}|version={data_key_version}",
        binding.tenant, binding.branch
    )
    .into_bytes()
}

/// Seals and opens cmcKeys under a master key.
#[derive(Clone)]
pub struct Vault {
    master: Arc<dyn MasterKey>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("master_version", &self.master.version())
            .finish_non_exhaustive()
    }
}

impl Vault {
    pub fn new(master: Arc<dyn MasterKey>) -> Self {
        Vault { master }
    }

    /// Seals a branch's cmcKey under a new data key of its own (version 1).
    pub fn seal_cmc_key(&self, binding: Binding, cmc_key: &str) -> Result<SealedCmcKey> {
        let data_key = SecretKey::generate()?;
        let version = 1;
        let master_version = self.master.version();
        let wrapped = self
            .master
            .wrap(&data_key, &data_key_aad(binding, version, master_version))?;
        let sealed = data_key.seal(cmc_key.as_bytes(), &cmc_key_aad(binding, version))?;
        Ok(SealedCmcKey {
            data_key: WrappedDataKey {
                version,
                master_version,
                wrapped,
            },
            sealed,
        })
    }

    /// The branch's cmcKey, for the moment of one call: zeroized when the answer drops.
    pub fn open_cmc_key(
        &self,
        binding: Binding,
        sealed: &SealedCmcKey,
    ) -> Result<Zeroizing<String>> {
        let data_key = &sealed.data_key;
        let key = self.master.unwrap(
            data_key.master_version,
            &data_key.wrapped,
            &data_key_aad(binding, data_key.version, data_key.master_version),
        )?;
        let bytes = key.open(&sealed.sealed, &cmc_key_aad(binding, data_key.version))?;
        let text = std::str::from_utf8(&bytes).map_err(|_| VaultError::DoesNotOpen)?;
        Ok(Zeroizing::new(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const CMC_KEY: &str = "0123456789ABCDEF0123456789ABCDEF";
    const A: Binding = Binding {
        tenant: 1,
        branch: 10,
    };

    fn vault(text: &str) -> Vault {
        Vault::new(Arc::new(LocalMasterKey::from_text(text, 1).unwrap()))
    }

    fn master_text() -> String {
        data_encoding::BASE64.encode(&[7u8; KEY_LEN])
    }

    #[test]
    fn a_sealed_key_opens_for_its_branch_and_holds_no_plaintext() {
        let vault = vault(&master_text());
        let sealed = vault.seal_cmc_key(A, CMC_KEY).unwrap();
        assert_eq!(vault.open_cmc_key(A, &sealed).unwrap().as_str(), CMC_KEY);
        let stored = [
            &sealed.sealed.ciphertext,
            &sealed.data_key.wrapped.ciphertext,
        ];
        for bytes in stored {
            assert!(
                !bytes
                    .windows(8)
                    .any(|w| CMC_KEY.as_bytes().windows(8).any(|k| k == w))
            );
        }
        assert_eq!(sealed.sealed.nonce.len(), NONCE_LEN);
        // A new seal of the same key differs: fresh data key, fresh nonces.
        let again = vault.seal_cmc_key(A, CMC_KEY).unwrap();
        assert_ne!(again.sealed, sealed.sealed);
        assert_ne!(again.data_key.wrapped, sealed.data_key.wrapped);
    }

    #[test]
    fn a_sealed_key_does_not_open_anywhere_else() {
        let vault = vault(&master_text());
        let sealed = vault.seal_cmc_key(A, CMC_KEY).unwrap();
        let other_branch = Binding { branch: 11, ..A };
        let other_tenant = Binding { tenant: 2, ..A };
        for binding in [other_branch, other_tenant] {
            assert!(matches!(
                vault.open_cmc_key(binding, &sealed),
                Err(VaultError::DoesNotOpen)
            ));
        }
        let mut altered = sealed.clone();
        altered.sealed.ciphertext[0] ^= 1;
        assert!(matches!(
            vault.open_cmc_key(A, &altered),
            Err(VaultError::DoesNotOpen)
        ));
        let mut other_version = sealed.clone();
        other_version.data_key.version = 2;
        assert!(matches!(
            vault.open_cmc_key(A, &other_version),
            Err(VaultError::DoesNotOpen)
        ));
        let other_master = self::vault(&data_encoding::HEXLOWER.encode(&[8u8; KEY_LEN]));
        assert!(matches!(
            other_master.open_cmc_key(A, &sealed),
            Err(VaultError::DoesNotOpen)
        ));
        let newer_master = Vault::new(Arc::new(
            LocalMasterKey::from_text(&master_text(), 2).unwrap(),
        ));
        assert!(matches!(
            newer_master.open_cmc_key(A, &sealed),
            Err(VaultError::OtherMasterVersion { found: 1, have: 2 })
        ));
    }

    #[test]
    fn master_keys_are_read_as_base64_or_hex_of_32_bytes_only() {
        assert!(LocalMasterKey::from_text(&master_text(), 1).is_ok());
        let hex = data_encoding::HEXLOWER.encode(&[9u8; KEY_LEN]);
        assert!(LocalMasterKey::from_text(&format!("  {hex}\n"), 1).is_ok());
        for bad in ["", "short", &data_encoding::BASE64.encode(&[1u8; 16])] {
            let error = LocalMasterKey::from_text(bad, 1).unwrap_err().to_string();
            assert!(error.contains("32 bytes"), "{error}");
        }
        // Neither the key nor the vault prints it.
        let key = LocalMasterKey::from_text(&master_text(), 1).unwrap();
        let printed = format!(
            "{key:?} {:?} {:?}",
            vault(&master_text()),
            SecretKey::generate().unwrap()
        );
        assert!(!printed.contains(&master_text()), "{printed}");
    }

    #[test]
    fn a_generated_key_file_is_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("ushuru-vault-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        let (first, created) = LocalMasterKey::load_or_generate(&path, 1).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (second, created) = LocalMasterKey::load_or_generate(&path, 1).unwrap();
        assert!(!created);
        let sealed = Vault::new(Arc::new(first))
            .seal_cmc_key(A, CMC_KEY)
            .unwrap();
        let opened = Vault::new(Arc::new(second))
            .open_cmc_key(A, &sealed)
            .unwrap();
        assert_eq!(opened.as_str(), CMC_KEY);
        // A damaged file is an error, never silently replaced by a new key.
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            LocalMasterKey::load_or_generate(&path, 1),
            Err(VaultError::KeyFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
