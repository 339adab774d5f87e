//! Synthetic vectors for tests and benchmarks: unit vectors around random cluster centres, the
//! shape real embeddings have (uniform random vectors in 384 dimensions defeat every HNSW,
//! because all distances concentrate), and `.npy` files so Python peers read the same vectors.

use std::io::{Read, Write};
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::distance::normalize;
use crate::error::{IndexError, Result};

/// Settings of [`clustered_unit_vectors`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterSpec {
    /// Vectors to draw.
    pub n: usize,
    /// Dimension.
    pub dim: usize,
    /// Cluster centres (random unit vectors). Default 1,000.
    pub clusters: usize,
    /// Norm of the Gaussian noise added to a centre before normalising. Default 0.9, which gives
    /// a cosine of about 0.75 to the centre and 0.55 between members, close to what
    /// all-MiniLM-L6-v2 gives its nearest neighbours.
    pub spread: f32,
    /// Seed of the centres; the same seed gives the same centres whatever `n` is.
    pub seed: u64,
    /// Seed of the members (use another for queries from the same clusters).
    pub member_seed: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            n: 100_000,
            dim: 384,
            clusters: 1_000,
            spread: 0.9,
            seed: 0,
            member_seed: 1,
        }
    }
}

fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(1e-12);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// `spec.n` unit vectors, row-major (`n × dim`), member `i` drawn around a random centre.
pub fn clustered_unit_vectors(spec: &ClusterSpec) -> Vec<f32> {
    let mut centre_rng = StdRng::seed_from_u64(spec.seed);
    let centres: Vec<Vec<f32>> = (0..spec.clusters.max(1))
        .map(|_| {
            let mut c: Vec<f32> = (0..spec.dim).map(|_| gaussian(&mut centre_rng)).collect();
            normalize(&mut c);
            c
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(spec.member_seed);
    let scale = spec.spread / (spec.dim as f32).sqrt();
    let mut out = Vec::with_capacity(spec.n * spec.dim);
    for _ in 0..spec.n {
        let centre = &centres[rng.random_range(0..centres.len())];
        let mut v: Vec<f32> = centre
            .iter()
            .map(|c| c + scale * gaussian(&mut rng))
            .collect();
        normalize(&mut v);
        out.extend_from_slice(&v);
    }
    out
}

/// Writes a float32 C-order `.npy` file of shape `(rows, dim)`.
pub fn write_npy(path: &Path, data: &[f32], dim: usize) -> Result<()> {
    let rows = data.len() / dim.max(1);
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut file = std::fs::File::create(path).map_err(|e| IndexError::io(path, e))?;
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    data.iter()
        .for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
    file.write_all(&bytes).map_err(|e| IndexError::io(path, e))
}

/// Reads a float32 C-order 2-D `.npy` file: (data, dim).
pub fn read_npy(path: &Path) -> Result<(Vec<f32>, usize)> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| IndexError::io(path, e))?;
    let bad = |reason: &str| IndexError::CorruptRecord {
        what: path.display().to_string(),
        reason: reason.to_string(),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len])
        .map_err(|_| bad("header is not UTF-8"))?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(bad("expected little-endian float32 in C order"));
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if dims.len() != 2 {
        return Err(bad("expected a 2-D array"));
    }
    let body = &bytes[start + header_len..];
    if body.len() != dims[0] * dims[1] * 4 {
        return Err(bad("data length does not match the shape"));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Ok((data, dims[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_unit_rows() {
        let spec = ClusterSpec {
            n: 50,
            dim: 8,
            clusters: 3,
            ..ClusterSpec::default()
        };
        let data = clustered_unit_vectors(&spec);
        for row in data.chunks(8) {
            let norm: f32 = row.iter().map(|x| x * x).sum();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        write_npy(&path, &data, 8).unwrap();
        let (read, dim) = read_npy(&path).unwrap();
        assert_eq!((read, dim), (data, 8));
    }
}

/// A Qdrant server process for tests: loopback ports of its own, storage in a fresh temporary
/// directory, stopped (SIGKILL) and its storage removed when dropped. One node, or one node of a
/// local cluster ([`QdrantServer::start_node`]).
#[derive(Debug)]
pub struct QdrantServer {
    binary: std::path::PathBuf,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
    http_port: u16,
    grpc_port: u16,
    p2p_port: u16,
    /// `--bootstrap` peer URI, for a cluster node after the first.
    bootstrap: Option<String>,
    cluster: bool,
}

impl QdrantServer {
    /// The Qdrant binary for tests: `ATTUNE_QDRANT_BIN`, else `tools/qdrant/qdrant` under
    /// `ATTUNE_SHARED_DIR` or the `shared` directory beside the repository; `None` when absent.
    pub fn binary() -> Option<std::path::PathBuf> {
        if let Some(path) = std::env::var_os("ATTUNE_QDRANT_BIN") {
            return Some(path.into());
        }
        let shared = std::env::var_os("ATTUNE_SHARED_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
        let path = shared.join("tools/qdrant/qdrant");
        path.is_file().then_some(path)
    }

    /// True when `ATTUNE_REQUIRE_QDRANT=1`: a missing binary fails the Qdrant tests instead of
    /// skipping them (CI sets it).
    pub fn required() -> bool {
        std::env::var("ATTUNE_REQUIRE_QDRANT").is_ok_and(|v| v == "1")
    }

    /// Starts a single-node server and waits until it is ready.
    pub fn start(binary: &Path) -> std::io::Result<Self> {
        let mut server = Self::new(binary, false, None)?;
        server.launch()?;
        Ok(server)
    }

    /// Starts a node of a local cluster (distributed mode): the first with `bootstrap` `None`,
    /// the others with the first's [`QdrantServer::peer_uri`].
    pub fn start_node(binary: &Path, bootstrap: Option<String>) -> std::io::Result<Self> {
        let mut server = Self::new(binary, true, bootstrap)?;
        server.launch()?;
        Ok(server)
    }

    fn new(binary: &Path, cluster: bool, bootstrap: Option<String>) -> std::io::Result<Self> {
        let port = || -> std::io::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let dir = std::env::temp_dir().join(format!(
            "attune-qdrant-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            binary: binary.to_path_buf(),
            dir,
            child: None,
            http_port: port()?,
            grpc_port: port()?,
            p2p_port: port()?,
            bootstrap,
            cluster,
        })
    }

    /// (Re)starts the process with the same ports and storage, and waits until it answers.
    pub fn launch(&mut self) -> std::io::Result<()> {
        let mut command = std::process::Command::new(&self.binary);
        command
            .current_dir(&self.dir)
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .env("QDRANT__LOG_LEVEL", "WARN")
            .env("QDRANT__SERVICE__HTTP_PORT", self.http_port.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc_port.to_string())
            .env("QDRANT__STORAGE__STORAGE_PATH", self.dir.join("storage"))
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                self.dir.join("snapshots"),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log"))?);
        if self.cluster {
            command
                .env("QDRANT__CLUSTER__ENABLED", "true")
                .env("QDRANT__CLUSTER__P2P__PORT", self.p2p_port.to_string())
                .arg("--uri")
                .arg(self.peer_uri());
            if let Some(bootstrap) = &self.bootstrap {
                command.arg("--bootstrap").arg(bootstrap);
            }
        }
        // The server dies with the thread that started it, even when the test process is
        // killed before it can drop this handle.
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(command.spawn()?);
        let started = std::time::Instant::now();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(2)))
            .build()
            .into();
        while started.elapsed() < std::time::Duration::from_secs(60) {
            if agent.get(format!("{}/readyz", self.url())).call().is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(std::io::Error::other(format!(
            "qdrant on port {} was not ready after 60 s (log: {})",
            self.http_port,
            self.dir.join("log").display()
        )))
    }

    /// Base URL of the REST API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The peer-to-peer URI other cluster nodes bootstrap from.
    pub fn peer_uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.p2p_port)
    }

    /// Stops the process at once (SIGKILL), keeping its storage for [`QdrantServer::launch`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The URL of one Qdrant server shared by every test of the calling test binary (started on
/// first use, from a thread that lives as long as the process), or `None` when there is no
/// Qdrant binary and [`QdrantServer::required`] is false. Tests keep apart by giving each store
/// its own [`crate::QdrantSettings::prefix`]. Panics when the binary is required but missing,
/// or when the server does not start.
pub fn shared_qdrant_url() -> Option<String> {
    static URL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let Some(binary) = QdrantServer::binary() else {
            assert!(
                !QdrantServer::required(),
                "ATTUNE_REQUIRE_QDRANT=1 but there is no Qdrant binary (ATTUNE_QDRANT_BIN or \
                 ../shared/tools/qdrant/qdrant)"
            );
            return None;
        };
        remove_dead_servers_storage();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("qdrant-for-tests".into())
            .spawn(move || match QdrantServer::start(&binary) {
                Ok(server) => {
                    tx.send(Ok(server.url())).expect("the test waits");
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => tx.send(Err(e.to_string())).expect("the test waits"),
            })
            .expect("spawn the qdrant thread");
        match rx.recv().expect("the qdrant thread answers") {
            Ok(url) => Some(url),
            Err(e) => panic!("starting qdrant for the tests: {e}"),
        }
    })
    .clone()
}

/// Removes the storage of shared test servers whose test process has exited (a shared server
/// is never dropped, so it cannot remove its own).
fn remove_dead_servers_storage() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("attune-qdrant-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
