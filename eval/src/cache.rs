//! The corpus-embedding cache: repeated evaluations of one model on one corpus embed it once.
//!
//! This module is the only reader and writer of cache files. A file is named by a key over the
//! model fingerprint, the encoder settings that change vectors, and every embedded text, so a
//! changed model, prefix, length limit or document invalidates it by construction.
//!
//! File layout (little-endian): magic `ATTNEMB1`, rows (u64), dim (u64), `rows·dim` f32 values,
//! then the sha256 of all preceding bytes. Files are written to a temporary name and renamed, so
//! a crash never leaves a truncated file under a valid name; a file that fails its checksum is
//! ignored (and overwritten by the next store).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};
use crate::retrieval::EmbeddingMatrix;

const MAGIC: &[u8; 8] = b"ATTNEMB1";
const HEADER_LEN: usize = 8 + 8 + 8;
const CHECKSUM_LEN: usize = 32;

/// Names one cached matrix (hex sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey(String);

impl CacheKey {
    /// A key over the model's fingerprint, a tag of the encoder settings that change vectors
    /// (prefix, sequence length), and the exact texts in order.
    pub fn new<S: AsRef<str>>(model_fingerprint: &str, settings_tag: &str, texts: &[S]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"attune-embedding-cache-v1\0");
        for part in [model_fingerprint, settings_tag] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update((texts.len() as u64).to_le_bytes());
        for text in texts {
            let text = text.as_ref();
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        Self(format!("{:x}", hasher.finalize()))
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A directory of cached embedding matrices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingCache {
    dir: PathBuf,
}

impl EmbeddingCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$ATTUNE_CACHE_DIR/embeddings`, else `$XDG_CACHE_HOME/attune/embeddings`, else
    /// `$HOME/.cache/attune/embeddings`, else `.attune-cache/embeddings`.
    pub fn default_dir() -> PathBuf {
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = env("ATTUNE_CACHE_DIR") {
            return PathBuf::from(dir).join("embeddings");
        }
        if let Some(dir) = env("XDG_CACHE_HOME") {
            return PathBuf::from(dir).join("attune/embeddings");
        }
        if let Some(home) = env("HOME") {
            return PathBuf::from(home).join(".cache/attune/embeddings");
        }
        PathBuf::from(".attune-cache/embeddings")
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.emb", key.as_str()))
    }

    /// The cached matrix for `key`, if a valid one exists. A corrupt file is reported in the log
    /// and treated as absent.
    pub fn load(&self, key: &CacheKey) -> Result<Option<EmbeddingMatrix>> {
        let path = self.path(key);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EvalError::io(path, e)),
        };
        match decode(&bytes) {
            Some(matrix) => Ok(Some(matrix)),
            None => {
                tracing::warn!(
                    "{}: corrupt embedding cache file, re-embedding",
                    path.display()
                );
                Ok(None)
            }
        }
    }

    /// Stores `matrix` under `key` atomically (temporary file, then rename).
    pub fn store(&self, key: &CacheKey, matrix: &EmbeddingMatrix) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| EvalError::io(&self.dir, e))?;
        let path = self.path(key);
        let staging = self
            .dir
            .join(format!(".{}.{}.tmp", key.as_str(), std::process::id()));
        let bytes = encode(matrix);
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&staging)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&staging, &path)
        };
        write().map_err(|e| {
            fs::remove_file(&staging).ok();
            EvalError::io(&path, e)
        })
    }
}

fn encode(matrix: &EmbeddingMatrix) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + matrix.data.len() * 4 + CHECKSUM_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(matrix.rows as u64).to_le_bytes());
    bytes.extend_from_slice(&(matrix.dim as u64).to_le_bytes());
    for v in &matrix.data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum);
    bytes
}

fn decode(bytes: &[u8]) -> Option<EmbeddingMatrix> {
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN || &bytes[..8] != MAGIC {
        return None;
    }
    let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if Sha256::digest(body).as_slice() != checksum {
        return None;
    }
    let rows = u64::from_le_bytes(body[8..16].try_into().ok()?) as usize;
    let dim = u64::from_le_bytes(body[16..24].try_into().ok()?) as usize;
    let values = &body[HEADER_LEN..];
    if values.len() != rows.checked_mul(dim)?.checked_mul(4)? {
        return None;
    }
    let data = values
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some(EmbeddingMatrix { rows, dim, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix() -> EmbeddingMatrix {
        EmbeddingMatrix {
            rows: 2,
            dim: 3,
            data: vec![0.5, -1.0, 2.25, 0.0, 1e-8, -3.5],
        }
    }

    #[test]
    fn round_trip_and_keying() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::new(dir.path().join("c"));
        let key = CacheKey::new("fp", "doc|256", &["a", "b"]);
        assert_eq!(cache.load(&key).unwrap(), None);
        cache.store(&key, &matrix()).unwrap();
        assert_eq!(cache.load(&key).unwrap(), Some(matrix()));

        // Anything that changes vectors changes the key.
        for other in [
            CacheKey::new("fp2", "doc|256", &["a", "b"]),
            CacheKey::new("fp", "doc|128", &["a", "b"]),
            CacheKey::new("fp", "doc|256", &["a", "c"]),
            CacheKey::new("fp", "doc|256", &["ab"]),
        ] {
            assert_ne!(other, key);
        }
    }

    #[test]
    fn corrupt_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::new(dir.path());
        let key = CacheKey::new("fp", "", &["a"]);
        cache.store(&key, &matrix()).unwrap();
        let path = cache.path(&key);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_LEN] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(cache.load(&key).unwrap(), None);
        fs::write(&path, &bytes[..10]).unwrap();
        assert_eq!(cache.load(&key).unwrap(), None);
        // A store repairs it.
        cache.store(&key, &matrix()).unwrap();
        assert_eq!(cache.load(&key).unwrap(), Some(matrix()));
    }
}
