//! Which implementation of the vector-store seam holds a deployment's collections, chosen by
//! settings: the embedded store (hnsw_rs + sled in a directory, the default for one machine) or
//! a Qdrant deployment (one node or a cluster, for catalogs and traffic past one machine).
//! `[store]` of `attune.toml` and `pipeline.toml`, and `--backend`/`--qdrant-url` on the
//! command line, all end here.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::qdrant::{QdrantSettings, QdrantStore};
use crate::store::Store;
use crate::vector_store::VectorStore;

/// An implementation of the vector-store seam.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreBackend {
    /// hnsw_rs graphs and sled databases in a store directory ([`Store`]). The default.
    #[default]
    Embedded,
    /// A Qdrant deployment ([`QdrantStore`]).
    Qdrant,
}

impl std::fmt::Display for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Embedded => "embedded",
            Self::Qdrant => "qdrant",
        })
    }
}

impl std::str::FromStr for StoreBackend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "embedded" => Ok(Self::Embedded),
            "qdrant" => Ok(Self::Qdrant),
            other => Err(format!(
                "unknown store backend {other:?} (embedded, qdrant)"
            )),
        }
    }
}

attune_core::serde_via_str!(StoreBackend);

/// Where collections live (`[store]`, with the Qdrant deployment under `[store.qdrant]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `embedded` (default: the store directory given apart, `--store`) or `qdrant`.
    pub backend: StoreBackend,
    /// The Qdrant deployment, used when `backend` is `qdrant`.
    pub qdrant: QdrantSettings,
}

impl StoreSettings {
    /// Opens the store: the embedded one in `dir` (created when `create`), or the Qdrant
    /// deployment (whose registry is created when missing). Fails naming the directory or the
    /// URL.
    pub fn open(&self, dir: Option<&Path>, create: bool) -> Result<Arc<dyn VectorStore>> {
        match self.backend {
            StoreBackend::Embedded => {
                let dir = dir.ok_or_else(|| {
                    IndexError::InvalidSetting(
                        "the embedded store needs its directory (--store DIR); or choose \
                         another backend (--backend qdrant)"
                            .into(),
                    )
                })?;
                Ok(Arc::new(if create {
                    Store::open_or_create(dir)?
                } else {
                    Store::open(dir)?
                }))
            }
            StoreBackend::Qdrant => Ok(Arc::new(QdrantStore::connect(self.qdrant.clone())?)),
        }
    }
}
