//! Mine the k hardest negatives of each query in a bank, from `.npy` files
//! as numpy writes them, into `.npy` files numpy reads back.
//!
//! ```text
//! cargo run --release --example mine -- QUERIES.npy QUERY_LABELS.npy BANK.npy BANK_LABELS.npy K OUT_DIR
//! cargo run --release --example mine -- --demo OUT_DIR   # writes synthetic inputs first, then mines them
//! ```
//!
//! Embeddings are float32 or float64 `(rows, D)` arrays; labels are 1-D
//! integer arrays. The output is `OUT_DIR/neighbors.npy` (int64, queries x
//! k, -1 where a query has fewer than k negatives) and
//! `OUT_DIR/distances.npy` (float32, queries x k, Euclidean). A bad file
//! (missing, wrong dtype, mismatched shapes) is reported, never a panic.

use std::path::{Path, PathBuf};

use contrastive_wgpu::mining::{Progress, NO_INDEX};
use contrastive_wgpu::npy;
use contrastive_wgpu::{synthetic, DistanceOptions, GpuContext};
use indicatif::{ProgressBar, ProgressStyle};

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

const USAGE: &str = "usage: mine QUERIES.npy QUERY_LABELS.npy BANK.npy BANK_LABELS.npy K OUT_DIR\n       mine --demo OUT_DIR";

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let paths: Vec<PathBuf> = match args.as_slice() {
        [flag, out] if flag == "--demo" => {
            let out = PathBuf::from(out);
            std::fs::create_dir_all(&out)?;
            let files = write_demo(&out)?;
            let mut paths: Vec<PathBuf> = files.to_vec();
            paths.push(PathBuf::from("10"));
            paths.push(out);
            paths
        }
        [q, ql, b, bl, k, out] => [q, ql, b, bl, k, out].iter().map(PathBuf::from).collect(),
        _ => return Err(USAGE.into()),
    };
    let k: usize = paths[4]
        .to_string_lossy()
        .parse()
        .ok()
        .filter(|&k| k > 0)
        .ok_or_else(|| format!("K must be a positive integer\n{USAGE}"))?;
    let out_dir = &paths[5];

    let queries = npy::read_f32_matrix(&paths[0])?;
    let query_labels = npy::read_labels(&paths[1])?;
    let bank = npy::read_f32_matrix(&paths[2])?;
    let bank_labels = npy::read_labels(&paths[3])?;
    let (n, d) = (queries.shape[0], queries.shape[1]);
    let m = bank.shape[0];
    if bank.shape[1] != d {
        return Err(format!(
            "{}: rows have {} values, but the queries have {d}",
            paths[2].display(),
            bank.shape[1]
        )
        .into());
    }
    for (labels, rows, path) in [(&query_labels, n, &paths[1]), (&bank_labels, m, &paths[3])] {
        if labels.len() != rows {
            return Err(format!(
                "{}: {} labels for {rows} rows",
                path.display(),
                labels.len()
            )
            .into());
        }
    }

    let gpu = GpuContext::new()?;
    eprintln!("adapter: {}", gpu.adapter());
    eprintln!("mining the {k} nearest negatives of {n} queries among {m} bank rows (D = {d})");
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} bank rows {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let neighbors = gpu.top_k_negatives_with_progress(
        &queries.values,
        &query_labels,
        &bank.values,
        &bank_labels,
        None,
        (d, k),
        DistanceOptions::default(),
        &mut |p: Progress| {
            bar.set_length(p.total);
            bar.set_position(p.done);
        },
    )?;
    bar.finish();

    std::fs::create_dir_all(out_dir)?;
    let indices: Vec<i64> = neighbors
        .iter()
        .map(|nb| {
            if nb.index == NO_INDEX {
                -1
            } else {
                i64::from(nb.index)
            }
        })
        .collect();
    let distances: Vec<f32> = neighbors.iter().map(|nb| nb.distance).collect();
    let neighbors_path = out_dir.join("neighbors.npy");
    let distances_path = out_dir.join("distances.npy");
    npy::write_i64(&neighbors_path, &[n, k], &indices)?;
    npy::write_f32(&distances_path, &[n, k], &distances)?;
    println!(
        "wrote {} and {}",
        neighbors_path.display(),
        distances_path.display()
    );
    let show = n.min(3);
    for q in 0..show {
        println!(
            "query {q}: nearest negatives {:?} at {:?}",
            &indices[q * k..(q * k + k.min(5))],
            &distances[q * k..(q * k + k.min(5))]
        );
    }
    Ok(())
}

/// Writes synthetic queries and bank (float64 embeddings, int64 labels) as
/// numpy would, and returns their paths.
fn write_demo(out: &Path) -> Result<[PathBuf; 4], Box<dyn std::error::Error>> {
    let (n, m, d) = (64, 20_000, 32);
    let files = [
        out.join("queries.npy"),
        out.join("query_labels.npy"),
        out.join("bank.npy"),
        out.join("bank_labels.npy"),
    ];
    npy::write_f32(&files[0], &[n, d], &synthetic::gaussian(n, d, 1))?;
    npy::write_i64(
        &files[1],
        &[n],
        &(0..n as i64).map(|i| i % 50).collect::<Vec<_>>(),
    )?;
    npy::write_f32(&files[2], &[m, d], &synthetic::gaussian(m, d, 2))?;
    npy::write_i64(
        &files[3],
        &[m],
        &(0..m as i64).map(|i| i % 50).collect::<Vec<_>>(),
    )?;
    Ok(files)
}
