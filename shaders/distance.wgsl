// Pairwise distances between two sets of embeddings.
//
// Two entry points, dispatched in this order for each chunk of rows:
//
// 1. `prepare_rows`: copies a chunk of rows (row-major f32, D values per row)
//    into rows padded with zeros to a multiple of 4, so `pairwise` can use
//    vec4 loads for any D, optionally divided by their L2 norm, and writes
//    each row's norm. Zero padding changes no distance, dot product or norm.
// 2. `pairwise`: one 64 x 64 tile of the output per workgroup, 4 x 4 outputs
//    per invocation, D streamed through workgroup memory 16 values at a time.
//
// Accuracy: Euclidean and squared Euclidean distances accumulate the squared
// differences (x_k - y_k)^2 directly rather than ||x||^2 + ||y||^2 - 2 x.y, so
// identical rows are exactly 0 apart, near-duplicates keep their true
// distance, and the result is never NaN for finite input. Euclidean pairs
// whose sum of squares overflows or may have underflowed are recomputed with
// scaling, so only distances beyond f32::MAX give +inf. Cosine distance is computed as ||u - v||^2 / 2 on the normalised
// rows u, v, which equals 1 - cos without its cancellation near 0.
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
// prepare_rows
// ---------------------------------------------------------------------------

struct PrepareParams {
    // Rows in this chunk.
    rows: u32,
    // Values per row (D).
    dim: u32,
    // Index of the chunk's first value within the bound source range (the
    // binding starts at an aligned offset at or before the chunk).
    source_offset: u32,
    // vec4s per padded output row: ceil(D / 4).
    vec_dim: u32,
    // 1: write x / ||x|| (rows of norm 0 stay 0); 0: write x.
    normalize: u32,
    // Workgroups along x in the dispatch grid; row = wid.x + wid.y * width.
    grid_width: u32,
    _pad0: u32,
    _pad1: u32,
}

const PREPARE_THREADS: u32 = 64u;

@group(0) @binding(0) var<uniform> prepare_params: PrepareParams;
@group(0) @binding(1) var<storage, read> source_rows: array<f32>;
@group(0) @binding(2) var<storage, read_write> prepared_rows: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> row_norms: array<f32>;

var<workgroup> reduce_scratch: array<f32, PREPARE_THREADS>;

// Tree reduction over the workgroup in a fixed order (deterministic).
// `use_max`: maximum instead of sum.
fn reduce_workgroup(local: u32, value: f32, use_max: bool) -> f32 {
    reduce_scratch[local] = value;
    workgroupBarrier();
    for (var stride = PREPARE_THREADS / 2u; stride > 0u; stride = stride / 2u) {
        if (local < stride) {
            let a = reduce_scratch[local];
            let b = reduce_scratch[local + stride];
            reduce_scratch[local] = select(a + b, max(a, b), use_max);
        }
        workgroupBarrier();
    }
    let result = reduce_scratch[0];
    workgroupBarrier();
    return result;
}

fn source_value(row: u32, k: u32) -> f32 {
    return source_rows[prepare_params.source_offset + row * prepare_params.dim + k];
}

// One workgroup per row.
@compute @workgroup_size(64)
fn prepare_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let row = wid.x + wid.y * prepare_params.grid_width;
    if (row >= prepare_params.rows) {
        return;
    }
    let dim = prepare_params.dim;

    // ||x|| = m * sqrt(sum (x_k / m)^2) with m = max |x_k|: no overflow or
    // underflow of the squares for any finite row.
    var largest = 0.0;
    for (var k = local; k < dim; k = k + PREPARE_THREADS) {
        largest = max(largest, abs(source_value(row, k)));
    }
    largest = reduce_workgroup(local, largest, true);
    var scaled_sum = 0.0;
    if (largest > 0.0) {
        for (var k = local; k < dim; k = k + PREPARE_THREADS) {
            let scaled = source_value(row, k) / largest;
            scaled_sum = scaled_sum + scaled * scaled;
        }
    }
    scaled_sum = reduce_workgroup(local, scaled_sum, false);
    let norm = largest * sqrt(scaled_sum);

    let divide = prepare_params.normalize != 0u && norm > 0.0;
    let divisor = select(1.0, norm, divide);
    let vec_dim = prepare_params.vec_dim;
    for (var v = local; v < vec_dim; v = v + PREPARE_THREADS) {
        var packed = vec4<f32>(0.0);
        for (var lane = 0u; lane < 4u; lane = lane + 1u) {
            let k = v * 4u + lane;
            if (k < dim) {
                let x = source_value(row, k);
                packed[lane] = select(x, x / divisor, divide);
            }
        }
        prepared_rows[row * vec_dim + v] = packed;
    }
    if (local == 0u) {
        row_norms[row] = norm;
    }
}

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
@group(0) @binding(3) var<storage, read> norms_x: array<f32>;
@group(0) @binding(4) var<storage, read> norms_y: array<f32>;
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
            if (norms_x[row] == 0.0 || norms_y[col] == 0.0) {
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
