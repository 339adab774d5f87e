//! A pipeline's work directory: where each stage writes, and the stage markers (the only reader
//! and writer of `WORK/stages/STAGE.json`).
//!
//! ```text
//! WORK/stages/STAGE.json   marker: the stage's key, its time and its typed outcome
//! WORK/mined.jsonl         mined pairs (with [mine])
//! WORK/tuned/              the tuned model directory
//! WORK/checkpoints/        training checkpoints (a crashed train stage resumes from them)
//! WORK/eval/               the evaluation report (metrics.json, per_query.csv, report.*)
//! WORK/report/             pipeline.json and pipeline.md
//! ```

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{PipelineError, PipelineReport, Stage};

/// A pipeline's work directory.
#[derive(Debug, Clone)]
pub struct Work {
    dir: PathBuf,
}

/// A finished stage's marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker<T> {
    /// The stage.
    pub stage: String,
    /// The key of the settings it ran with.
    pub key: String,
    /// Seconds it took.
    pub seconds: f64,
    /// When it finished (seconds since the Unix epoch).
    pub finished_unix: u64,
    /// What it found.
    pub outcome: T,
}

impl Work {
    /// The work directory at `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn marker_path(&self, stage: Stage) -> PathBuf {
        self.dir.join("stages").join(format!("{stage}.json"))
    }

    /// The pairs exported from the feedback log (with the judged ones, when mixed).
    pub fn feedback_pairs(&self) -> PathBuf {
        self.dir.join("feedback-pairs.jsonl")
    }

    /// The mined pairs.
    pub fn mined(&self) -> PathBuf {
        self.dir.join("mined.jsonl")
    }

    /// The tuned model directory.
    pub fn tuned(&self) -> PathBuf {
        self.dir.join("tuned")
    }

    /// The training checkpoints.
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// The evaluation report's directory.
    pub fn eval(&self) -> PathBuf {
        self.dir.join("eval")
    }

    /// The pipeline report's directory.
    pub fn report(&self) -> PathBuf {
        self.dir.join("report")
    }

    /// The marker of `stage` when it holds `key` and an outcome of type `T`; markers written
    /// with other settings, or by a version whose outcome differs, count as absent.
    pub fn marker<T: DeserializeOwned>(&self, stage: Stage, key: &str) -> Option<Marker<T>> {
        let text = std::fs::read_to_string(self.marker_path(stage)).ok()?;
        serde_json::from_str::<Marker<T>>(&text)
            .ok()
            .filter(|m| m.key == key)
    }

    /// The report written by the last run that finished its report stage.
    pub fn read_report(&self) -> Result<PipelineReport, PipelineError> {
        let path = self.report().join("pipeline.json");
        let text = std::fs::read_to_string(&path).map_err(|e| PipelineError::Io {
            path: path.clone(),
            source: e,
        })?;
        serde_json::from_str(&text).map_err(|e| PipelineError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Removes the marker of `stage` (its outputs are about to change).
    pub fn forget(&self, stage: Stage) {
        let _ = std::fs::remove_file(self.marker_path(stage));
    }

    /// Writes the marker of `stage`, finished now after `seconds` with settings `key` and
    /// `outcome` (temporary file, then rename).
    pub fn write_marker<T: Serialize>(
        &self,
        stage: Stage,
        key: &str,
        seconds: f64,
        outcome: &T,
    ) -> Result<(), PipelineError> {
        let marker = Marker {
            stage: stage.name().to_string(),
            key: key.to_string(),
            seconds,
            finished_unix: now_unix(),
            outcome,
        };
        write_json(&self.marker_path(stage), &marker)
    }
}

/// Writes `value` as pretty JSON to `path` through a temporary file and a rename.
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), PipelineError> {
    let io = |e: std::io::Error| PipelineError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).expect("pipeline records serialize");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
