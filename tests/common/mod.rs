//! Helpers the binary's integration tests share: the real model's directory, running the
//! `attune` binary, and servers on free loopback ports that are killed however a test ends.
//! Each test crate uses what it needs.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// all-MiniLM-L6-v2 (`scripts/fetch-model.sh`), or `ATTUNE_MODEL_DIR`.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("ATTUNE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").exists(),
        "{}: no model; run scripts/fetch-model.sh (or set ATTUNE_MODEL_DIR)",
        dir.display()
    );
    dir
}

/// Runs the `attune` binary with `args`.
pub fn attune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(args)
        .output()
        .unwrap()
}

/// Kills the server when the test ends, however it ends.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
