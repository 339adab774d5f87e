//! Training checkpoints: the only module that reads or writes a checkpoint directory.
//!
//! Layout:
//! ```text
//! DIR/step-000000050/weights.safetensors    trainable variables by name (f32)
//! DIR/step-000000050/optimizer.safetensors  AdamW moments: `<name>::m`, `<name>::v`
//! DIR/step-000000050/state.json             step, run identity, progress, log so far
//! DIR/best/weights.safetensors              the best validated weights so far
//! DIR/best/state.json                       their step and nDCG@10
//! DIR/training_log.jsonl                    the live log (one JSON object per line)
//! ```
//! A checkpoint is written into a hidden staging directory and renamed into place, and
//! `state.json` is written last, so a process killed at any moment leaves either a complete
//! checkpoint or none. Data order and dropout are functions of (seed, step), so the step is all
//! the random state a resumed run needs.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::AdamWState;

/// File and directory names inside a checkpoint directory.
pub mod files {
    /// Trainable weights of one checkpoint.
    pub const WEIGHTS: &str = "weights.safetensors";
    /// Optimizer moments of one checkpoint.
    pub const OPTIMIZER: &str = "optimizer.safetensors";
    /// Step, run identity and progress of one checkpoint (written last).
    pub const STATE: &str = "state.json";
    /// Directory of the best validated weights.
    pub const BEST: &str = "best";
    /// The live training log.
    pub const LOG: &str = "training_log.jsonl";
    /// Prefix of step checkpoint directories (`step-000000050`).
    pub const STEP_PREFIX: &str = "step-";
}

/// Version of the checkpoint format written here.
const FORMAT: u32 = 1;

/// What must match for a checkpoint to continue a run: the base model, the data and every
/// setting that changes the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// Fingerprint of the base model directory.
    pub base_model: String,
    /// sha256 over the training pairs' texts, in order.
    pub data: String,
    /// The settings, as JSON (compared field by field).
    pub settings: serde_json::Value,
}

/// One line of the training log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// `"train"` for an optimizer step, `"eval"` for a validation.
    pub kind: String,
    /// Optimizer steps completed (0 = before training).
    pub step: usize,
    /// Fractional epoch at the end of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<f64>,
    /// Loss of the step's batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning rate the step used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Real (unpadded) tokens in the step's texts, special tokens included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    /// Training examples (pairs) per second over the run so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples_per_s: Option<f64>,
    /// Validation metrics (`ndcg@10`, ...), for `"eval"` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::collections::BTreeMap<String, f64>>,
    /// Whether this validation is the best so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<bool>,
    /// Seconds of training (validation excluded) since the run began, across resumptions.
    pub elapsed_s: f64,
}

/// The best validation so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// Step of the weights.
    pub step: usize,
    /// Their validation nDCG@10.
    pub ndcg_at_10: f64,
}

/// Progress of a run at a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps completed.
    pub step: usize,
    /// Training pairs seen.
    pub examples: usize,
    /// Seconds spent training (validation excluded).
    pub elapsed_s: f64,
    /// The best validation so far, if any.
    pub best: Option<Best>,
    /// The log up to this step.
    pub log: Vec<LogRecord>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: u32,
    identity: RunIdentity,
    progress: Progress,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Where it was read from.
    pub path: PathBuf,
    /// Progress at the checkpoint.
    pub progress: Progress,
    /// Trainable weights by name.
    pub weights: HashMap<String, Tensor>,
    /// Optimizer state.
    pub optimizer: AdamWState,
}

/// A checkpoint directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    /// The store at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn create_dir(&self) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))
    }

    /// Writes a step checkpoint and removes older ones beyond the newest `keep` (at least 1).
    pub fn save(
        &self,
        identity: &RunIdentity,
        progress: &Progress,
        weights: &HashMap<String, Tensor>,
        optimizer: &AdamWState,
        keep: usize,
    ) -> Result<PathBuf> {
        self.create_dir()?;
        let name = format!("{}{:09}", files::STEP_PREFIX, progress.step);
        let dest = self.dir.join(&name);
        let staging = self.dir.join(format!(".{name}.tmp"));
        reset_dir(&staging)?;
        save_tensors(weights, &staging.join(files::WEIGHTS))?;
        let mut moments = HashMap::with_capacity(optimizer.moments.len() * 2);
        for (param, (first, second)) in &optimizer.moments {
            moments.insert(format!("{param}::m"), first.clone());
            moments.insert(format!("{param}::v"), second.clone());
        }
        save_tensors(&moments, &staging.join(files::OPTIMIZER))?;
        let state = StateFile {
            format: FORMAT,
            identity: identity.clone(),
            progress: progress.clone(),
        };
        write_json(&staging.join(files::STATE), &state)?;
        if dest.exists() {
            fs::remove_dir_all(&dest).map_err(|e| TrainError::io(&dest, e))?;
        }
        fs::rename(&staging, &dest).map_err(|e| TrainError::io(&dest, e))?;
        let steps = self.step_dirs()?;
        for (_, old) in steps.iter().rev().skip(keep.max(1)) {
            fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
        }
        Ok(dest)
    }

    /// Complete step checkpoints, oldest first.
    fn step_dirs(&self) -> Result<Vec<(usize, PathBuf)>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let mut steps = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| TrainError::io(&self.dir, e))? {
            let entry = entry.map_err(|e| TrainError::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(step) = name
                .strip_prefix(files::STEP_PREFIX)
                .and_then(|s| s.parse::<usize>().ok())
            else {
                continue;
            };
            if entry.path().join(files::STATE).exists() {
                steps.push((step, entry.path()));
            }
        }
        steps.sort();
        Ok(steps)
    }

    /// The newest complete step checkpoint, if any.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        Ok(self.step_dirs()?.pop().map(|(_, path)| path))
    }

    /// Loads the checkpoint at `path` onto `device`, refusing one made by a different run
    /// (the message names the first setting that differs).
    pub fn load(&self, path: &Path, identity: &RunIdentity, device: &Device) -> Result<Checkpoint> {
        let state: StateFile = read_json(&path.join(files::STATE))?;
        let refuse = |problem: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            problem,
        };
        if state.format != FORMAT {
            return Err(refuse(format!(
                "checkpoint format {} (this build reads {FORMAT})",
                state.format
            )));
        }
        if let Some(difference) = identity_difference(&state.identity, identity) {
            return Err(refuse(format!(
                "it belongs to a different run: {difference}; start without --resume or use another checkpoint directory"
            )));
        }
        let weights = load_tensors(&path.join(files::WEIGHTS), device)?;
        let mut raw = load_tensors(&path.join(files::OPTIMIZER), device)?;
        let mut moments = HashMap::new();
        let names: Vec<String> = raw
            .keys()
            .filter_map(|k| k.strip_suffix("::m").map(str::to_string))
            .collect();
        for name in names {
            let first = raw.remove(&format!("{name}::m"));
            let second = raw.remove(&format!("{name}::v"));
            match (first, second) {
                (Some(m), Some(v)) => {
                    moments.insert(name, (m, v));
                }
                _ => {
                    return Err(refuse(format!(
                        "optimizer state for `{name}` is incomplete"
                    )))
                }
            }
        }
        if let Some(extra) = raw.keys().next() {
            return Err(refuse(format!("unexpected optimizer tensor `{extra}`")));
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            optimizer: AdamWState {
                steps: state.progress.step,
                moments,
            },
            progress: state.progress,
            weights,
        })
    }

    /// Replaces the best weights.
    pub fn save_best(&self, weights: &HashMap<String, Tensor>, best: &Best) -> Result<()> {
        self.create_dir()?;
        let dest = self.dir.join(files::BEST);
        let staging = self.dir.join(format!(".{}.tmp", files::BEST));
        reset_dir(&staging)?;
        save_tensors(weights, &staging.join(files::WEIGHTS))?;
        write_json(&staging.join(files::STATE), best)?;
        if dest.exists() {
            fs::remove_dir_all(&dest).map_err(|e| TrainError::io(&dest, e))?;
        }
        fs::rename(&staging, &dest).map_err(|e| TrainError::io(&dest, e))
    }

    /// The best weights and their record, if any were saved.
    pub fn load_best(&self, device: &Device) -> Result<Option<(Best, HashMap<String, Tensor>)>> {
        let dir = self.dir.join(files::BEST);
        if !dir.join(files::STATE).exists() {
            return Ok(None);
        }
        let best: Best = read_json(&dir.join(files::STATE))?;
        Ok(Some((
            best,
            load_tensors(&dir.join(files::WEIGHTS), device)?,
        )))
    }

    /// Rewrites the live log with `records` (after a resume, the log continues from the
    /// checkpoint, not from where the killed run stopped).
    pub fn rewrite_log(&self, records: &[LogRecord]) -> Result<()> {
        self.create_dir()?;
        let path = self.dir.join(files::LOG);
        fs::write(&path, log_lines(records)).map_err(|e| TrainError::io(&path, e))
    }

    /// Appends one record to the live log.
    pub fn append_log(&self, record: &LogRecord) -> Result<()> {
        self.create_dir()?;
        let path = self.dir.join(files::LOG);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        file.write_all(log_lines(std::slice::from_ref(record)).as_bytes())
            .map_err(|e| TrainError::io(&path, e))
    }

    /// Deletes the whole directory (after a successful run).
    pub fn remove(&self) -> Result<()> {
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))?;
        }
        Ok(())
    }
}

/// The log as JSON lines.
pub fn log_lines(records: &[LogRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).expect("a log record serializes") + "\n")
        .collect()
}

/// The first field in which two identities differ, described.
fn identity_difference(saved: &RunIdentity, current: &RunIdentity) -> Option<String> {
    if saved.base_model != current.base_model {
        return Some("the base model differs".to_string());
    }
    if saved.data != current.data {
        return Some("the training data differ".to_string());
    }
    let (serde_json::Value::Object(a), serde_json::Value::Object(b)) =
        (&saved.settings, &current.settings)
    else {
        return (saved.settings != current.settings).then(|| "the settings differ".to_string());
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().find_map(|k| {
        let (x, y) = (a.get(k), b.get(k));
        (x != y).then(|| {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("unset".to_string(), |v| v.to_string());
            format!("setting `{k}` was {} and is now {}", show(x), show(y))
        })
    })
}

fn reset_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))
}

fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(tensors, path).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })
}

fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("checkpoint state serializes");
    fs::write(path, text).map_err(|e| TrainError::io(path, e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: format!("line {}: {e}", e.line()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(lr: f64) -> RunIdentity {
        RunIdentity {
            base_model: "abc".into(),
            data: "def".into(),
            settings: serde_json::json!({"lr": lr, "batch_size": 4}),
        }
    }

    fn progress(step: usize) -> Progress {
        Progress {
            step,
            examples: step * 4,
            elapsed_s: 1.5,
            best: None,
            log: vec![LogRecord {
                kind: "train".into(),
                step,
                epoch: Some(0.5),
                loss: Some(0.25),
                lr: Some(1e-5),
                grad_norm: Some(2.0),
                tokens: Some(100),
                examples_per_s: Some(3.0),
                metrics: None,
                best: None,
                elapsed_s: 1.5,
            }],
        }
    }

    #[test]
    fn saves_keeps_the_newest_and_loads_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path().join("ckpt"));
        assert!(store.latest().unwrap().is_none());
        let w = Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let weights = HashMap::from([("w".to_string(), w.clone())]);
        let optimizer = AdamWState {
            steps: 0,
            moments: HashMap::from([("w".to_string(), ((&w * 0.5).unwrap(), w.sqr().unwrap()))]),
        };
        for step in [10, 20, 30] {
            store
                .save(&identity(1e-5), &progress(step), &weights, &optimizer, 2)
                .unwrap();
        }
        let latest = store.latest().unwrap().unwrap();
        assert!(latest.ends_with("step-000000030"));
        assert!(!tmp.path().join("ckpt/step-000000010").exists());
        assert!(tmp.path().join("ckpt/step-000000020").exists());

        let loaded = store.load(&latest, &identity(1e-5), &Device::Cpu).unwrap();
        assert_eq!(loaded.progress, progress(30));
        assert_eq!(loaded.optimizer.steps, 30);
        assert_eq!(
            loaded.weights["w"].to_vec1::<f32>().unwrap(),
            [1.0, 2.0, 3.0]
        );
        let (m, v) = &loaded.optimizer.moments["w"];
        assert_eq!(m.to_vec1::<f32>().unwrap(), [0.5, 1.0, 1.5]);
        assert_eq!(v.to_vec1::<f32>().unwrap(), [1.0, 4.0, 9.0]);
    }

    #[test]
    fn refuses_a_checkpoint_of_another_run_naming_the_setting() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path());
        let weights = HashMap::new();
        let optimizer = AdamWState {
            steps: 0,
            moments: HashMap::new(),
        };
        let path = store
            .save(&identity(1e-5), &progress(5), &weights, &optimizer, 1)
            .unwrap();
        let err = store
            .load(&path, &identity(3e-5), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("setting `lr` was 0.00001 and is now 0.00003"),
            "{err}"
        );
    }

    #[test]
    fn a_half_written_checkpoint_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path());
        fs::create_dir_all(tmp.path().join("step-000000040")).unwrap();
        fs::write(
            tmp.path().join("step-000000040").join(files::WEIGHTS),
            b"partial",
        )
        .unwrap();
        assert!(store.latest().unwrap().is_none());
    }
}
