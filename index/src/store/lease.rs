//! Reader leases: a process that opens a generation to serve it holds a locked file naming that
//! generation, so no build deletes a generation some server still serves. The lock (flock) is
//! released by the kernel when the process dies, so a lease never outlives its holder; a build
//! removes the files of dead holders.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

static NEXT_LEASE: AtomicU64 = AtomicU64::new(0);

/// A held lease on one generation; released when dropped.
#[derive(Debug)]
pub(crate) struct GenerationLease {
    path: PathBuf,
    _file: File,
}

impl GenerationLease {
    /// Takes a lease on `generation` of collection `name`.
    pub(crate) fn acquire(store: &Store, name: &str, generation: u64) -> Result<Self> {
        let dir = store.collection_dir(name).join(keys::LEASES_DIR);
        fs::create_dir_all(&dir).map_err(|e| IndexError::io(&dir, e))?;
        let path = dir.join(format!(
            "{}{generation:06}.{}.{}",
            keys::GENERATION_PREFIX,
            std::process::id(),
            NEXT_LEASE.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| IndexError::io(&path, e))?;
        file.lock().map_err(|e| IndexError::io(&path, e))?;
        Ok(Self { path, _file: file })
    }
}

impl Drop for GenerationLease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Generations of collection `name` that a live process holds a lease on. Lease files of dead
/// holders are removed on the way.
pub(crate) fn leased_generations(store: &Store, name: &str) -> Result<BTreeSet<u64>> {
    let dir = store.collection_dir(name).join(keys::LEASES_DIR);
    let mut leased = BTreeSet::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(leased),
        Err(e) => return Err(IndexError::io(&dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| IndexError::io(&dir, e))?.path();
        let Some(generation) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(keys::GENERATION_PREFIX))
            .and_then(|n| n.split('.').next())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let file = match File::open(&path) {
            Ok(file) => file,
            // Released between listing and opening.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(IndexError::io(&path, e)),
        };
        match file.try_lock() {
            Ok(()) => {
                // Nobody holds it: its process is gone.
                let _ = fs::remove_file(&path);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                leased.insert(generation);
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(IndexError::io(&path, e)),
        }
    }
    Ok(leased)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_seen_while_held_and_gone_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let lease = GenerationLease::acquire(&store, "shop", 3).unwrap();
        let other = GenerationLease::acquire(&store, "shop", 4).unwrap();
        assert_eq!(
            leased_generations(&store, "shop").unwrap(),
            BTreeSet::from([3, 4])
        );
        drop(lease);
        assert_eq!(
            leased_generations(&store, "shop").unwrap(),
            BTreeSet::from([4])
        );
        drop(other);
        assert!(leased_generations(&store, "shop").unwrap().is_empty());
    }

    #[test]
    fn the_file_of_a_dead_holder_is_not_a_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        let leases = store.collection_dir("shop").join(keys::LEASES_DIR);
        fs::create_dir_all(&leases).unwrap();
        let stale = leases.join("gen-000002.999999.0");
        fs::write(&stale, b"").unwrap();
        assert!(leased_generations(&store, "shop").unwrap().is_empty());
        assert!(!stale.exists());
    }
}
