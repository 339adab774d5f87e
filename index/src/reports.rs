//! A collection's latest evaluation report: the files a pipeline run publishes beside the
//! generations (`collections/NAME/reports/latest/`) so that the server can show them. They
//! outlive re-index jobs and go with `drop_collection`.
//!
//! Publishing writes every file into a fresh directory and then renames it into place, so a
//! reader sees the old report or the new one, never a mix.

use std::fs;
use std::path::PathBuf;

use crate::error::{IndexError, Result};
use crate::keys;
use crate::store::{now_unix, validate_name, Store};

impl Store {
    fn reports_dir(&self, collection: &str) -> PathBuf {
        self.collection_dir(collection).join(keys::REPORTS_DIR)
    }

    /// Replaces the latest report of `collection` with `files` (name, content). Names follow
    /// the rules of collection names (`[A-Za-z0-9_.-]`, 1–64, no leading dot). The collection
    /// need not be built yet.
    pub fn publish_report(&self, collection: &str, files: &[(&str, &[u8])]) -> Result<()> {
        validate_name(collection)?;
        for (name, _) in files {
            validate_name(name)?;
        }
        let reports = self.reports_dir(collection);
        fs::create_dir_all(&reports).map_err(|e| IndexError::io(&reports, e))?;
        let staging = reports.join(format!(".staging-{}-{}", std::process::id(), now_unix()));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| IndexError::io(&staging, e))?;
        }
        fs::create_dir_all(&staging).map_err(|e| IndexError::io(&staging, e))?;
        for (name, body) in files {
            let path = staging.join(name);
            fs::write(&path, body).map_err(|e| IndexError::io(&path, e))?;
        }
        let latest = reports.join(keys::LATEST_REPORT_DIR);
        let retired = reports.join(format!(".retired-{}-{}", std::process::id(), now_unix()));
        if latest.exists() {
            fs::rename(&latest, &retired).map_err(|e| IndexError::io(&latest, e))?;
        }
        fs::rename(&staging, &latest).map_err(|e| IndexError::io(&staging, e))?;
        crate::fsync_dir(&reports)?;
        if retired.exists() {
            fs::remove_dir_all(&retired).map_err(|e| IndexError::io(&retired, e))?;
        }
        Ok(())
    }

    /// The names of the latest report's files, sorted; empty when none was published.
    pub fn report_files(&self, collection: &str) -> Result<Vec<String>> {
        validate_name(collection)?;
        let latest = self.reports_dir(collection).join(keys::LATEST_REPORT_DIR);
        if !latest.exists() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(&latest).map_err(|e| IndexError::io(&latest, e))? {
            let entry = entry.map_err(|e| IndexError::io(&latest, e))?;
            // Only regular files: a symbolic link placed there is not part of the report.
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// One file of the latest report; `None` when there is no report or no such regular file
    /// (a symbolic link or a directory in the report folder is never followed or served).
    pub fn report_file(&self, collection: &str, name: &str) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        validate_name(collection)?;
        validate_name(name)?;
        let path = self
            .reports_dir(collection)
            .join(keys::LATEST_REPORT_DIR)
            .join(name);
        // O_NOFOLLOW: the final component is opened only if it is not a link, in one step
        // (no window between a check and the open).
        let opened = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        };
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // ELOOP: the name is a symbolic link.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
            Err(e) => return Err(IndexError::io(&path, e)),
        };
        if !file
            .metadata()
            .map_err(|e| IndexError::io(&path, e))?
            .is_file()
        {
            return Ok(None);
        }
        let mut body = Vec::new();
        file.read_to_end(&mut body)
            .map_err(|e| IndexError::io(&path, e))?;
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_report_replaces_the_previous_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        assert!(store.report_files("shop").unwrap().is_empty());
        assert_eq!(store.report_file("shop", "report.json").unwrap(), None);
        store
            .publish_report("shop", &[("report.json", b"{}"), ("old.svg", b"<svg/>")])
            .unwrap();
        store
            .publish_report("shop", &[("report.json", b"{\"run\": 2}")])
            .unwrap();
        assert_eq!(store.report_files("shop").unwrap(), vec!["report.json"]);
        assert_eq!(
            store.report_file("shop", "report.json").unwrap().unwrap(),
            b"{\"run\": 2}"
        );
        // A report alone does not make a collection.
        assert!(store.collection_names().unwrap().is_empty());
        // Names that could leave the directory are refused.
        for bad in ["../x", ".hidden", "a/b", ""] {
            assert!(store.report_file("shop", bad).is_err(), "{bad}");
            assert!(
                store.publish_report("shop", &[(bad, b"x")]).is_err(),
                "{bad}"
            );
        }
        // Dropping the collection removes its report.
        store.drop_collection("shop").unwrap();
        assert!(store.report_files("shop").unwrap().is_empty());
    }

    #[test]
    fn links_in_the_report_folder_are_neither_listed_nor_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path()).unwrap();
        store
            .publish_report("shop", &[("report.json", b"{}")])
            .unwrap();
        let secret = dir.path().join("secret.txt");
        fs::write(&secret, b"private").unwrap();
        let latest = store.reports_dir("shop").join(keys::LATEST_REPORT_DIR);
        std::os::unix::fs::symlink(&secret, latest.join("leak.txt")).unwrap();
        fs::create_dir(latest.join("sub")).unwrap();
        assert_eq!(store.report_files("shop").unwrap(), ["report.json"]);
        assert_eq!(store.report_file("shop", "leak.txt").unwrap(), None);
        assert_eq!(store.report_file("shop", "sub").unwrap(), None);
        assert_eq!(
            store.report_file("shop", "report.json").unwrap(),
            Some(b"{}".to_vec())
        );
    }
}
