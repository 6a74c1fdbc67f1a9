// Pairwise distances between two sets of embeddings.
//
// `pairwise` reads rows prepared by `prepare_rows` (shaders/rows.wgsl):
// padded to a multiple of 4 values, optionally normalised, with their norms
// in the row metadata. One 64 x 64 tile of the output per workgroup, 4 x 4
// outputs per invocation, D streamed through workgroup memory 16 values at a
// time.
//
// Accuracy: Euclidean and squared Euclidean distances accumulate the squared
// differences (x_k - y_k)^2 directly rather than ||x||^2 + ||y||^2 - 2 x.y, so
// identical rows are exactly 0 apart, near-duplicates keep their true
// distance, and the result is never NaN for finite input. Euclidean pairs
// whose sum of squares overflows or may have underflowed are recomputed with
// scaling, so only distances beyond f32::MAX give +inf. Cosine distance is
// computed as ||u - v||^2 / 2 on the normalised rows u, v, which equals
// 1 - cos without its cancellation near 0.
//
// The CPU mirror is `src/reference/distance.rs`; the host side that owns the
// pipelines and plans the chunks is `src/distance.rs`.

// Distance kinds; must match `Distance::shader_code` in src/distance.rs.
const KIND_EUCLIDEAN: u32 = 0u;
const KIND_SQUARED_EUCLIDEAN: u32 = 1u;
const KIND_COSINE: u32 = 2u;
const KIND_DOT: u32 = 3u;

// The distance this pipeline computes; one pipeline per kind so that the
// inner loop carries no branch.
override DISTANCE_KIND: u32 = KIND_EUCLIDEAN;

// ---------------------------------------------------------------------------
// pairwise
// ---------------------------------------------------------------------------

struct PairwiseParams {
    // Rows of X (output rows) and of Y (output columns) in this block.
    rows: u32,
    cols: u32,
    // vec4s per prepared row.
    vec_dim: u32,
    // Index of the block's first output within the bound output range.
    out_offset: u32,
    // Distance between consecutive output rows, in values.
    out_row_stride: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const TILE: u32 = 64u;          // outputs per tile side
const THREADS_SIDE: u32 = 16u;  // invocations per workgroup side
const K_VECS: u32 = 4u;         // vec4s of D per step (16 values)

@group(0) @binding(0) var<uniform> pairwise_params: PairwiseParams;
@group(0) @binding(1) var<storage, read> rows_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> rows_y: array<vec4<f32>>;
// Row metadata from prepare_rows: (bits of the norm, label, id, 0).
@group(0) @binding(3) var<storage, read> meta_x: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> meta_y: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> distances: array<f32>;

var<workgroup> tile_x: array<vec4<f32>, 256>; // TILE rows x K_VECS
var<workgroup> tile_y: array<vec4<f32>, 256>;

fn load_tile_vec(from_x: bool, row: u32, v: u32) -> vec4<f32> {
    let p = pairwise_params;
    if (v >= p.vec_dim) {
        return vec4<f32>(0.0);
    }
    if (from_x) {
        if (row < p.rows) {
            return rows_x[row * p.vec_dim + v];
        }
    } else {
        if (row < p.cols) {
            return rows_y[row * p.vec_dim + v];
        }
    }
    return vec4<f32>(0.0);
}

fn accumulate(acc: f32, a: vec4<f32>, b: vec4<f32>) -> f32 {
    if (DISTANCE_KIND == KIND_DOT) {
        return acc + dot(a, b);
    }
    let diff = a - b;
    return acc + dot(diff, diff);
}

// ||x_row - y_col|| computed as m * sqrt(sum ((x_k - y_k) / m)^2) with
// m = max |x_k - y_k|: exact where the plain sum of squares overflows
// (distances near f32::MAX) or underflows (rows ~1e-19 apart or closer).
fn scaled_euclidean(row: u32, col: u32) -> f32 {
    let vec_dim = pairwise_params.vec_dim;
    var largest = vec4<f32>(0.0);
    for (var v = 0u; v < vec_dim; v = v + 1u) {
        largest = max(largest, abs(rows_x[row * vec_dim + v] - rows_y[col * vec_dim + v]));
    }
    let m = max(max(largest.x, largest.y), max(largest.z, largest.w));
    if (m == 0.0 || m > F32_MAX) {
        return m;
    }
    var sum = 0.0;
    for (var v = 0u; v < vec_dim; v = v + 1u) {
        let scaled = (rows_x[row * vec_dim + v] - rows_y[col * vec_dim + v]) / m;
        sum = sum + dot(scaled, scaled);
    }
    return m * sqrt(sum);
}

const F32_MAX: f32 = 3.40282347e38;
// Below this sum of squares some squares may have underflowed.
const UNDERFLOW_RISK: f32 = 7.8886091e-31; // 2^-100

fn finish(acc: f32, row: u32, col: u32) -> f32 {
    switch DISTANCE_KIND {
        case KIND_EUCLIDEAN: {
            if (acc >= UNDERFLOW_RISK && acc <= F32_MAX) {
                return sqrt(acc);
            }
            // Rare: overflow, underflow, or identical rows (exactly 0 either way).
            return scaled_euclidean(row, col);
        }
        case KIND_COSINE: {
            // cos = 0 where a norm is 0, so the distance is 1 there.
            if (bitcast<f32>(meta_x[row].x) == 0.0 || bitcast<f32>(meta_y[col].x) == 0.0) {
                return 1.0;
            }
            return min(0.5 * acc, 2.0);
        }
        default: {
            return acc;
        }
    }
}

@compute @workgroup_size(16, 16)
fn pairwise(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let p = pairwise_params;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let flat = lid.y * THREADS_SIDE + lid.x;
    // Each invocation loads one vec4 of X and one of Y per step.
    let load_row = flat / K_VECS;
    let load_vec = flat % K_VECS;

    // acc[a][b]: output (row0 + lid.y + 16a, col0 + lid.x + 16b).
    var acc: array<vec4<f32>, 4>;
    for (var k = 0u; k < p.vec_dim; k = k + K_VECS) {
        tile_x[flat] = load_tile_vec(true, row0 + load_row, k + load_vec);
        tile_y[flat] = load_tile_vec(false, col0 + load_row, k + load_vec);
        workgroupBarrier();
        for (var kk = 0u; kk < K_VECS; kk = kk + 1u) {
            var ys: array<vec4<f32>, 4>;
            for (var b = 0u; b < 4u; b = b + 1u) {
                ys[b] = tile_y[(lid.x + b * THREADS_SIDE) * K_VECS + kk];
            }
            for (var a = 0u; a < 4u; a = a + 1u) {
                let xa = tile_x[(lid.y + a * THREADS_SIDE) * K_VECS + kk];
                acc[a] = vec4<f32>(
                    accumulate(acc[a].x, xa, ys[0]),
                    accumulate(acc[a].y, xa, ys[1]),
                    accumulate(acc[a].z, xa, ys[2]),
                    accumulate(acc[a].w, xa, ys[3]),
                );
            }
        }
        workgroupBarrier();
    }

    for (var a = 0u; a < 4u; a = a + 1u) {
        let row = row0 + lid.y + a * THREADS_SIDE;
        if (row >= p.rows) {
            continue;
        }
        for (var b = 0u; b < 4u; b = b + 1u) {
            let col = col0 + lid.x + b * THREADS_SIDE;
            if (col < p.cols) {
                distances[p.out_offset + row * p.out_row_stride + col] = finish(acc[a][b], row, col);
            }
        }
    }
}
