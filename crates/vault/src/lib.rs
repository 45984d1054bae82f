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
    #[error("{0}")]
    NotRotatable(String),
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

/// Wraps and unwraps data keys: a local key ([`LocalMasterKey`], [`Keyring`]) or a KMS.
pub trait MasterKey: Send + Sync {
    /// The version new wraps are made under.
    fn version(&self) -> u32;
    fn wrap(&self, data_key: &SecretKey, aad: &[u8]) -> Result<Sealed>;
    fn unwrap(&self, master_version: u32, wrapped: &Sealed, aad: &[u8]) -> Result<SecretKey>;
    /// Makes a new version the current one (earlier versions still unwrap); its number.
    /// A provider that cannot (a key given in the environment) says how to rotate instead.
    fn add_version(&self) -> Result<u32> {
        Err(VaultError::NotRotatable(
            "this master key provider cannot make a new version".into(),
        ))
    }

    /// Takes in versions made elsewhere (another process rotating), before a rotation.
    fn refresh(&self) -> Result<()> {
        Ok(())
    }
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

/// Several versions of a local master key: the highest wraps, all unwrap. Read from
/// `USHURU_MASTER_KEY` or a key file, one `<version>:<key>` per line (or comma); a bare
/// key is version 1, which is what a single-key file or variable holds. From a file it
/// can make a new version ([`MasterKey::add_version`]): the file is rewritten with it,
/// atomically and readable by its owner only, and a version another process added is
/// found by reading the file again.
pub struct Keyring {
    keys: std::sync::RwLock<std::collections::BTreeMap<u32, Arc<SecretKey>>>,
    file: Option<std::path::PathBuf>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("versions", &self.versions())
            .field("file", &self.file)
            .finish()
    }
}

fn parse_keyring(text: &str) -> Result<std::collections::BTreeMap<u32, Arc<SecretKey>>> {
    let mut keys = std::collections::BTreeMap::new();
    for entry in text
        .split(['\n', ','])
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with('#'))
    {
        let (version, key) = match entry.split_once(':') {
            Some((version, key)) => {
                let version = version
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| {
                        VaultError::MasterKey(
                            "a keyring entry is `<version>:<key>`, version 1 or more".into(),
                        )
                    })?;
                (version, key)
            }
            None => (1, entry),
        };
        let key = LocalMasterKey::from_text(key, version)?.key;
        if keys.insert(version, Arc::new(key)).is_some() {
            return Err(VaultError::MasterKey(format!(
                "version {version} is given twice"
            )));
        }
    }
    if keys.is_empty() {
        return Err(VaultError::MasterKey("no key given".into()));
    }
    Ok(keys)
}

impl Keyring {
    /// From text (`USHURU_MASTER_KEY`): fixed, it cannot add versions itself.
    pub fn from_text(text: &str) -> Result<Self> {
        Ok(Keyring {
            keys: std::sync::RwLock::new(parse_keyring(text)?),
            file: None,
        })
    }

    /// From a key file, which new versions are added to.
    pub fn from_file(path: &Path) -> Result<Self> {
        let keys = Self::read_file(path)?;
        Ok(Keyring {
            keys: std::sync::RwLock::new(keys),
            file: Some(path.to_owned()),
        })
    }

    /// The key file at `path`, created with a new random key if there is none (see
    /// [`LocalMasterKey::load_or_generate`]). The boolean says whether it was created now.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool)> {
        let created = !path.exists();
        if created {
            LocalMasterKey::load_or_generate(path, 1)?;
        }
        Ok((Self::from_file(path)?, created))
    }

    fn read_file(path: &Path) -> Result<std::collections::BTreeMap<u32, Arc<SecretKey>>> {
        let error = |message: String| VaultError::KeyFile {
            path: path.display().to_string(),
            message,
        };
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?);
        parse_keyring(&text).map_err(|e| error(e.to_string()))
    }

    fn lock(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, std::collections::BTreeMap<u32, Arc<SecretKey>>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The versions held, oldest first.
    pub fn versions(&self) -> Vec<u32> {
        self.lock().keys().copied().collect()
    }

    fn key(&self, version: u32) -> Option<Arc<SecretKey>> {
        if let Some(key) = self.lock().get(&version) {
            return Some(Arc::clone(key));
        }
        // Another process (`ushuru admin`) may have added it to the file.
        self.reload().ok()?;
        self.lock().get(&version).cloned()
    }

    /// Takes in the versions the file holds now. A version whose key differs from the one
    /// held here means the file was replaced under us: refused, never silently mixed.
    fn reload(&self) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let fresh = Self::read_file(file)?;
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        merge(&mut keys, fresh, file)
    }
}

/// Adds `fresh` to `keys`; a version both hold with different keys is an error.
fn merge(
    keys: &mut std::collections::BTreeMap<u32, Arc<SecretKey>>,
    fresh: std::collections::BTreeMap<u32, Arc<SecretKey>>,
    file: &Path,
) -> Result<()> {
    for (version, key) in fresh {
        match keys.get(&version) {
            Some(held) if held.0.as_ref() != key.0.as_ref() => {
                return Err(VaultError::KeyFile {
                    path: file.display().to_string(),
                    message: format!(
                        "master key version {version} in the file is not the one this process \
                         holds: the file was replaced; restore it, do not start anew"
                    ),
                });
            }
            Some(_) => {}
            None => {
                keys.insert(version, key);
            }
        }
    }
    Ok(())
}

/// An exclusive lock on `<key file>.lock`, held while the key file is rewritten, so that
/// two processes rotating at once take turns (the second sees the first's version).
struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    fn take(path: &Path) -> std::io::Result<FileLock> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(std::path::PathBuf::from(lock_path))?;
        // Released when the file closes (this lock drops), or the process dies.
        #[cfg(unix)]
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(FileLock(file))
    }
}

impl MasterKey for Keyring {
    fn version(&self) -> u32 {
        self.lock().keys().next_back().copied().unwrap_or(1)
    }

    fn wrap(&self, data_key: &SecretKey, aad: &[u8]) -> Result<Sealed> {
        let version = self.version();
        let key = self.key(version).ok_or(VaultError::DoesNotOpen)?;
        key.seal(data_key.0.as_ref(), aad)
    }

    fn unwrap(&self, master_version: u32, wrapped: &Sealed, aad: &[u8]) -> Result<SecretKey> {
        let key = self
            .key(master_version)
            .ok_or(VaultError::OtherMasterVersion {
                found: master_version,
                have: self.version(),
            })?;
        let bytes = key.open(wrapped, aad)?;
        SecretKey::from_slice(&bytes).ok_or(VaultError::DoesNotOpen)
    }

    fn refresh(&self) -> Result<()> {
        self.reload()
    }

    fn add_version(&self) -> Result<u32> {
        let Some(path) = &self.file else {
            return Err(VaultError::NotRotatable(
                "the master key comes from USHURU_MASTER_KEY: give it as `1:<old>,2:<new>` \
                 (new keys from any 32-byte random source), restart, then rotate to re-wrap \
                 every data key under the new version"
                    .into(),
            ));
        };
        let error = |e: std::io::Error| {
            // A key file that cannot be written (a read-only secret mount) is a provider
            // that cannot make versions, not an internal failure.
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) {
                VaultError::NotRotatable(format!(
                    "the master key file {} cannot be written ({e}): add a version to it \
                     by hand (`<version>:<key>` on a line of its own), restart, then rotate",
                    path.display()
                ))
            } else {
                VaultError::KeyFile {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }
            }
        };
        let _lock = FileLock::take(path).map_err(error)?;
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // What the file holds now: another process may have added a version.
        merge(&mut keys, Self::read_file(path)?, path)?;
        let version = keys.keys().next_back().copied().unwrap_or(0) + 1;
        let key = SecretKey::generate()?;
        // Sized up front and written in place: no copy of a key is left behind unzeroized.
        let mut text = Zeroizing::new(String::with_capacity(64 * (keys.len() + 1)));
        for (v, k) in keys
            .iter()
            .map(|(v, k)| (*v, k.as_ref()))
            .chain([(version, &key)])
        {
            text.push_str(&v.to_string());
            text.push(':');
            data_encoding::BASE64.encode_append(k.0.as_ref(), &mut text);
            text.push('\n');
        }
        // Written beside under a name of its own, synced, renamed over, and the directory
        // synced: the file is never half written, and the new version survives a crash.
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{}.new", std::process::id()));
        let temporary = std::path::PathBuf::from(temporary);
        let _ = std::fs::remove_file(&temporary);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary).map_err(error)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(error)?;
        file.sync_all().map_err(error)?;
        std::fs::rename(&temporary, path).map_err(error)?;
        if let Some(directory) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(directory)
                .and_then(|d| d.sync_all())
                .map_err(error)?;
        }
        keys.insert(version, Arc::new(key));
        Ok(version)
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

    /// The master key version new wraps are made under.
    pub fn master_version(&self) -> u32 {
        self.master.version()
    }

    /// A new master key version, made current (see [`MasterKey::add_version`]).
    pub fn add_master_version(&self) -> Result<u32> {
        self.master.add_version()
    }

    /// Takes in master key versions another process made (see [`MasterKey::refresh`]).
    pub fn refresh_master(&self) -> Result<()> {
        self.master.refresh()
    }

    /// The same cmcKey sealed under a new data key (its version one more), wrapped by the
    /// current master key.
    pub fn rotate_data_key(&self, binding: Binding, sealed: &SealedCmcKey) -> Result<SealedCmcKey> {
        let cmc_key = self.open_cmc_key(binding, sealed)?;
        let version = sealed
            .data_key
            .version
            .checked_add(1)
            .ok_or(VaultError::DoesNotOpen)?;
        let data_key = SecretKey::generate()?;
        let master_version = self.master.version();
        let wrapped = self
            .master
            .wrap(&data_key, &data_key_aad(binding, version, master_version))?;
        let resealed = data_key.seal(cmc_key.as_bytes(), &cmc_key_aad(binding, version))?;
        Ok(SealedCmcKey {
            data_key: WrappedDataKey {
                version,
                master_version,
                wrapped,
            },
            sealed: resealed,
        })
    }

    /// The same data key wrapped by the current master key version (the cmcKey's own seal
    /// does not change); `None` if it already is.
    pub fn rewrap_data_key(
        &self,
        binding: Binding,
        sealed: &SealedCmcKey,
    ) -> Result<Option<SealedCmcKey>> {
        let master_version = self.master.version();
        let data_key = &sealed.data_key;
        if data_key.master_version == master_version {
            return Ok(None);
        }
        let key = self.master.unwrap(
            data_key.master_version,
            &data_key.wrapped,
            &data_key_aad(binding, data_key.version, data_key.master_version),
        )?;
        let wrapped = self.master.wrap(
            &key,
            &data_key_aad(binding, data_key.version, master_version),
        )?;
        Ok(Some(SealedCmcKey {
            data_key: WrappedDataKey {
                version: data_key.version,
                master_version,
                wrapped,
            },
            sealed: sealed.sealed.clone(),
        }))
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
    fn keys_rotate_and_every_version_still_opens() {
        let dir = std::env::temp_dir().join(format!("ushuru-keyring-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        let (ring, created) = Keyring::load_or_generate(&path).unwrap();
        assert!(created);
        let vault = Vault::new(Arc::new(ring));
        let first = vault.seal_cmc_key(A, CMC_KEY).unwrap();
        // Data key: a new version, the same cmcKey, the old seal still opening.
        let second = vault.rotate_data_key(A, &first).unwrap();
        assert_eq!(
            (second.data_key.version, second.data_key.master_version),
            (2, 1)
        );
        assert_ne!(second.data_key.wrapped, first.data_key.wrapped);
        assert_eq!(vault.open_cmc_key(A, &second).unwrap().as_str(), CMC_KEY);
        assert_eq!(vault.open_cmc_key(A, &first).unwrap().as_str(), CMC_KEY);
        // Master key: a new version in the file; re-wrapping moves the data key to it.
        assert_eq!(
            vault.rewrap_data_key(A, &second).unwrap(),
            None,
            "already current"
        );
        assert_eq!(vault.add_master_version().unwrap(), 2);
        let third = vault.rewrap_data_key(A, &second).unwrap().unwrap();
        assert_eq!(
            (third.data_key.version, third.data_key.master_version),
            (2, 2)
        );
        assert_eq!(
            third.sealed, second.sealed,
            "the cmcKey's own seal is untouched"
        );
        assert_eq!(vault.open_cmc_key(A, &third).unwrap().as_str(), CMC_KEY);
        // Another process reading the file holds both versions.
        let reread = Vault::new(Arc::new(Keyring::from_file(&path).unwrap()));
        assert_eq!(reread.master_version(), 2);
        assert_eq!(reread.open_cmc_key(A, &second).unwrap().as_str(), CMC_KEY);
        assert_eq!(reread.open_cmc_key(A, &third).unwrap().as_str(), CMC_KEY);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Two processes rotating at once take turns: each makes a version of its own.
        let (one, two) = (
            Keyring::from_file(&path).unwrap(),
            Keyring::from_file(&path).unwrap(),
        );
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| one.add_version().unwrap());
            let b = scope.spawn(|| two.add_version().unwrap());
            (a.join().unwrap(), b.join().unwrap())
        });
        let mut made = [a, b];
        made.sort_unstable();
        assert_eq!(made, [3, 4]);
        let both = Keyring::from_file(&path).unwrap();
        assert_eq!(both.versions(), [1, 2, 3, 4]);
        // A file replaced under a running process is refused, not mixed in.
        let text = std::fs::read_to_string(&path).unwrap();
        let replaced = text.replacen(
            text.lines().next().unwrap(),
            &format!("1:{}", data_encoding::BASE64.encode(&[3u8; KEY_LEN])),
            1,
        );
        std::fs::write(&path, replaced).unwrap();
        assert!(
            matches!(both.refresh(), Err(VaultError::KeyFile { message, .. }) if message.contains("replaced"))
        );
        // A keyring from the environment cannot make versions, and says what to do.
        let text = format!(
            "1:{},2:{}",
            master_text(),
            data_encoding::BASE64.encode(&[9u8; KEY_LEN])
        );
        let fixed = Keyring::from_text(&text).unwrap();
        assert_eq!(fixed.versions(), [1, 2]);
        assert!(
            matches!(fixed.add_version(), Err(VaultError::NotRotatable(m)) if m.contains("USHURU_MASTER_KEY"))
        );
        assert!(Keyring::from_text(&format!("1:{0},1:{0}", master_text())).is_err());
        assert!(Keyring::from_text("0:abc").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
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
