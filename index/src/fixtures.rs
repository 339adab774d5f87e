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
