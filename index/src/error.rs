//! Errors of the index crate. User errors (bad corpus lines, unknown names, mismatched models,
//! bad filters) name the file, line, collection, space or field at fault; storage errors name
//! the path.

use std::path::{Path, PathBuf};

/// Result with [`IndexError`].
pub type Result<T> = std::result::Result<T, IndexError>;

/// Everything that can go wrong in the store, the graphs and re-index jobs.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// sled reported an error (including "in use by another process").
    #[error("store database {path}: {message}")]
    Storage {
        /// The generation database directory.
        path: PathBuf,
        /// sled's message.
        message: String,
    },
    /// Another process (a server or a build) has this generation's database open; sled allows
    /// one process at a time.
    #[error(
        "store database {path} is in use by another attune process (a running `attune serve` or \
         `attune index build`); stop it or send the work to it"
    )]
    InUse {
        /// The generation database directory.
        path: PathBuf,
    },
    /// A persisted graph is truncated, corrupted or of another format; it is rebuilt from the
    /// stored vectors when the collection opens.
    #[error("graph file {path}: {reason}")]
    CorruptGraph {
        /// The graph file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A stored record (manifest, document, vector) cannot be decoded.
    #[error("corrupt record in {what}: {reason}")]
    CorruptRecord {
        /// Which record.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A vector does not have the dimension of its space.
    #[error("{what}: expected dimension {expected}, got {found}")]
    DimensionMismatch {
        /// Which vector.
        what: String,
        /// The space's dimension.
        expected: usize,
        /// The vector's length.
        found: usize,
    },
    /// A vector is zero or not finite and cannot be normalised.
    #[error("{what}: the vector is zero or not finite")]
    InvalidVector {
        /// Which vector.
        what: String,
    },
    /// tantivy failed on a lexical index (reading, writing or searching it).
    #[error("lexical index, {what}: {reason}")]
    Lexical {
        /// What was being done.
        what: String,
        /// tantivy's message.
        reason: String,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    /// A collection or space name is not allowed.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The directory is not a store (no `attune-store.json`); `attune index build` creates one.
    #[error("{path} is not an attune store (no attune-store.json); `attune index build --store` creates one")]
    NotAStore {
        /// The directory given.
        path: PathBuf,
    },
    /// No collection of that name exists in the store.
    #[error("unknown collection {name:?} in {store} (collections: {available})")]
    UnknownCollection {
        /// The name asked for.
        name: String,
        /// The store directory.
        store: PathBuf,
        /// The collections that exist, comma-separated, or "none".
        available: String,
    },
    /// The collection exists but has no committed generation yet (its first build has not
    /// finished).
    #[error("collection {name:?} has no finished build yet; run `attune index build`")]
    NotBuilt {
        /// The collection.
        name: String,
    },
    /// The collection has no vector space of that name.
    #[error("collection {collection:?} has no space {space:?} (spaces: {available})")]
    UnknownSpace {
        /// The collection.
        collection: String,
        /// The space asked for.
        space: String,
        /// The spaces that exist, comma-separated.
        available: String,
    },
    /// A space was searched or updated with vectors from a different model than the one it was
    /// built with.
    #[error(
        "space {space:?} of collection {collection:?} was built with model {stored}; \
         the vectors given come from model {given}. Re-index the space with that model, or use \
         the model it was built with"
    )]
    ModelMismatch {
        /// The collection.
        collection: String,
        /// The space.
        space: String,
        /// The fingerprint the space is bound to.
        stored: String,
        /// The fingerprint of the model offered.
        given: String,
    },
    /// A corpus line is malformed (bad JSON, no id, no text). Nothing has been committed.
    #[error("{path}:{line}: {message}")]
    Corpus {
        /// The corpus file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A document given to an upsert is invalid.
    #[error("document {id:?}: {message}")]
    InvalidDocument {
        /// The document's id (empty when it has none).
        id: String,
        /// What is wrong.
        message: String,
    },
    /// A search filter is malformed.
    #[error("invalid filter {filter:?}: {message}")]
    InvalidFilter {
        /// The filter as given.
        filter: String,
        /// What is wrong.
        message: String,
    },
    /// A generation that is no longer current was written to or caught up after the records
    /// it lacks were removed; the write was not applied (retry on the current generation).
    #[error("{what}: this generation is no longer current; retry")]
    Superseded {
        /// What could not be done.
        what: String,
    },
    /// The Qdrant deployment a store lives in could not be reached, or refused a request
    /// (after the retries its settings allow). Nothing was acknowledged.
    #[error("Qdrant at {url}: {message}")]
    Qdrant {
        /// Qdrant's URL.
        url: String,
        /// The request and what went wrong.
        message: String,
    },
    /// The embedding backend failed.
    #[error("embedding with the model of space {space:?} failed: {message}")]
    Embedding {
        /// The space being embedded.
        space: String,
        /// The backend's message.
        message: String,
    },
}

impl IndexError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A sled error on the database at `path`.
    pub(crate) fn storage(path: &Path, error: sled::Error) -> Self {
        // sled wraps the failed file lock in an error of kind Other with this message.
        if let sled::Error::Io(io) = &error {
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
            {
                return Self::InUse {
                    path: path.to_path_buf(),
                };
            }
        }
        Self::Storage {
            path: path.to_path_buf(),
            message: error.to_string(),
        }
    }

    /// A write refused by generation `generation` of `collection` because journaled writes it
    /// lacks need its models to be embedded first (whoever serves it catches up, then retries).
    pub(crate) fn behind_journal(collection: &str, generation: u64) -> Self {
        Self::Superseded {
            what: format!(
                "collection {collection:?} generation {generation} has journaled writes to \
                 re-embed before it takes new ones"
            ),
        }
    }

    /// True for errors caused by the caller's input rather than by the store.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Self::DimensionMismatch { .. }
                | Self::InvalidVector { .. }
                | Self::InvalidSetting(_)
                | Self::InvalidName { .. }
                | Self::NotAStore { .. }
                | Self::UnknownCollection { .. }
                | Self::NotBuilt { .. }
                | Self::UnknownSpace { .. }
                | Self::ModelMismatch { .. }
                | Self::Corpus { .. }
                | Self::InvalidDocument { .. }
                | Self::InvalidFilter { .. }
        )
    }
}
