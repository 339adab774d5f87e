//! Names of everything the store persists: files and directories of a store, and the sled
//! trees and keys of a generation database and of the A/B event log. Only `store`, `events` and `reports`
//! use them.

/// Store marker file at the root: `{"format": N}`.
pub const STORE_FILE: &str = "attune-store.json";
/// Format version written in [`STORE_FILE`].
pub const STORE_FORMAT: u32 = 1;
/// Directory holding one directory per collection.
pub const COLLECTIONS_DIR: &str = "collections";
/// A collection's manifest, the commit point of generation switches.
pub const MANIFEST_FILE: &str = "collection.json";
/// Prefix of generation directories: `gen-000001`.
pub const GENERATION_PREFIX: &str = "gen-";
/// The sled database inside a generation directory.
pub const DATABASE_DIR: &str = "db";
/// Extension of graph files inside a generation directory: `<space>.graph`.
pub const GRAPH_EXTENSION: &str = "graph";
/// A generation's lexical space: a tantivy index directory (see [`crate::lexical`]).
pub const LEXICAL_DIR: &str = "lexical.tantivy";

/// Tree: node number (u32 big-endian) → document record (JSON).
pub const TREE_DOCUMENTS: &str = "documents";
/// Tree: external id (UTF-8) → node number (u32 big-endian). Its values are the live nodes.
pub const TREE_IDS: &str = "ids";
/// Tree: `field \0 value-json \0 node` → empty, for metadata filters.
pub const TREE_FIELDS: &str = "fields";
/// Tree of single keys below.
pub const TREE_META: &str = "meta";
/// Prefix of per-space vector trees: node (u32 big-endian) → content hash (16 bytes) + f32 LE.
pub const TREE_VECTORS_PREFIX: &str = "vectors/";

/// Meta key: the next node number to assign (u32 big-endian).
pub const KEY_NEXT_NODE: &[u8] = b"next_node";
/// Meta key: the spaces of this generation and their model identities (JSON).
pub const KEY_SPACES: &[u8] = b"spaces";

/// Meta key: the last journal sequence number applied to this generation (u64 big-endian).
pub const KEY_JOURNAL_SEQ: &[u8] = b"journal_seq";
/// A collection's write journal, beside its generations (see `journal`).
pub const JOURNAL_DIR: &str = "journal";
/// A collection's reader leases: one locked file per process serving a generation,
/// `gen-000007.<pid>.<n>`.
pub const LEASES_DIR: &str = "leases";
/// A generation's documents as committed, for the next build: `documents.snapshot` (JSON
/// lines: a header `{"format", "journal_seq", "documents"}`, then one stored document per line).
pub const SNAPSHOT_FILE: &str = "documents.snapshot";

/// A collection's published reports, beside its generations.
pub const REPORTS_DIR: &str = "reports";
/// The latest report inside [`REPORTS_DIR`] (replaced whole by each publication).
pub const LATEST_REPORT_DIR: &str = "latest";
/// A collection's A/B event log (sled), beside its generations: it outlives re-index jobs.
pub const EVENTS_DIR: &str = "ab-events";
/// Key in the event log's default tree: the A/B test's salt (UTF-8).
pub const KEY_SALT: &[u8] = b"ab_salt";
/// Events tree: request id (UTF-8) → served request (JSON).
pub const TREE_SERVED: &str = "served";
/// Events tree: request id \0 document id \0 event → feedback event (JSON); one record per
/// (request, document, event). Logs written before de-duplication have `request id \0
/// sequence (u64 big-endian)` keys; they are read the same way.
pub const TREE_FEEDBACK: &str = "feedback";
