// Dense layers of an embedding model, y = act(x W + b), and their gradients.
//
// `gemm` computes one block of C = op(A) op(B), with each operand read
// through strides so that one tiled kernel serves all three products of a
// layer:
//
//   forward          Y  = act(X W + b)         A = X,        B = W
//   input gradient   dX = (dY * act'(Y)) W^T   A = dY (mask), B = W^T
//   weight gradient  dW = X^T (dY * act'(Y))   A = X^T,      B = dY (mask)
//
// act is the identity or ReLU; ReLU's derivative is 1 where the layer's
// output Y is > 0 and 0 elsewhere, so the backward products read Y as a
// mask on the dY operand. One 64 x 64 tile of C per workgroup, 4 x 4 outputs
// per invocation, the inner dimension streamed through workgroup memory 16
// values at a time. Each output is one sequential sum over the inner
// dimension, so results are bitwise reproducible; the weight gradient is
// accumulated over chunks of rows in a fixed order (FLAG_ACCUMULATE).
//
// `column_sums` is the bias gradient db = sum over rows of dY * act'(Y).
//
// The CPU mirror is `src/reference/linear.rs`; the host side that plans the
// chunks is `src/linear.rs`.

struct GemmParams {
    // C is rows x cols; the sum runs over `inner`.
    rows: u32,
    cols: u32,
    inner: u32,
    flags: u32,
    // A(r, k) = a[a_offset + r * a_row_stride + k * a_inner_stride]
    a_offset: u32,
    a_row_stride: u32,
    a_inner_stride: u32,
    // The mask of the masked operand sits at the same index as the operand,
    // shifted by mask_offset - (that operand's offset) in its own binding.
    mask_offset: u32,
    // B(k, c) = b[b_offset + k * b_inner_stride + c * b_col_stride]
    b_offset: u32,
    b_inner_stride: u32,
    b_col_stride: u32,
    // bias[bias_offset + c] is added to column c (FLAG_BIAS).
    bias_offset: u32,
    // C(r, c) = out[out_offset + r * out_row_stride + c]
    out_offset: u32,
    out_row_stride: u32,
    _pad0: u32,
    _pad1: u32,
}

const FLAG_BIAS: u32 = 1u;        // add bias[c]
const FLAG_RELU: u32 = 2u;        // max(value, 0) after the bias
const FLAG_ACCUMULATE: u32 = 4u;  // add to what `out` holds
const FLAG_MASK_A: u32 = 8u;      // A(r, k) counts only where mask > 0
const FLAG_MASK_B: u32 = 16u;     // B(k, c) counts only where mask > 0

const TILE: u32 = 64u;          // outputs per tile side
const THREADS_SIDE: u32 = 16u;  // invocations per workgroup side
const INNER_STEP: u32 = 16u;    // inner values per step through workgroup memory

@group(0) @binding(0) var<uniform> gemm_params: GemmParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> tile_a: array<f32, 1024>; // TILE rows x INNER_STEP
var<workgroup> tile_b: array<f32, 1024>; // INNER_STEP x TILE columns

fn has_flag(flag: u32) -> bool {
    return (gemm_params.flags & flag) != 0u;
}

fn load_a(r: u32, k: u32) -> f32 {
    let p = gemm_params;
    if (r >= p.rows || k >= p.inner) {
        return 0.0;
    }
    let at = r * p.a_row_stride + k * p.a_inner_stride;
    let value = a[p.a_offset + at];
    if (has_flag(FLAG_MASK_A) && !(mask[p.mask_offset + at] > 0.0)) {
        return 0.0;
    }
    return value;
}

fn load_b(k: u32, c: u32) -> f32 {
    let p = gemm_params;
    if (k >= p.inner || c >= p.cols) {
        return 0.0;
    }
    let at = k * p.b_inner_stride + c * p.b_col_stride;
    let value = b[p.b_offset + at];
    if (has_flag(FLAG_MASK_B) && !(mask[p.mask_offset + at] > 0.0)) {
        return 0.0;
    }
    return value;
}

@compute @workgroup_size(16, 16)
fn gemm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let p = gemm_params;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let flat = lid.y * THREADS_SIDE + lid.x;

    // acc[i][j]: output (row0 + lid.y + 16 i, col0 + lid.x + 16 j).
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.inner; k0 = k0 + INNER_STEP) {
        // 1024 values of each tile, 4 per invocation; consecutive
        // invocations read consecutive k of A and consecutive columns of B.
        for (var q = 0u; q < 4u; q = q + 1u) {
            let e = flat + q * 256u;
            tile_a[e] = load_a(row0 + e / INNER_STEP, k0 + e % INNER_STEP);
            tile_b[e] = load_b(k0 + e / TILE, col0 + e % TILE);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < INNER_STEP; kk = kk + 1u) {
            let bs = vec4<f32>(
                tile_b[kk * TILE + lid.x],
                tile_b[kk * TILE + lid.x + 16u],
                tile_b[kk * TILE + lid.x + 32u],
                tile_b[kk * TILE + lid.x + 48u],
            );
            for (var i = 0u; i < 4u; i = i + 1u) {
                acc[i] = acc[i] + tile_a[(lid.y + i * THREADS_SIDE) * INNER_STEP + kk] * bs;
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i = i + 1u) {
        let r = row0 + lid.y + i * THREADS_SIDE;
        if (r >= p.rows) {
            continue;
        }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let c = col0 + lid.x + j * THREADS_SIDE;
            if (c >= p.cols) {
                continue;
            }
            let at = p.out_offset + r * p.out_row_stride + c;
            var value = acc[i][j];
            if (has_flag(FLAG_ACCUMULATE)) {
                value = out[at] + value;
            }
            if (has_flag(FLAG_BIAS)) {
                value = value + bias[p.bias_offset + c];
            }
            if (has_flag(FLAG_RELU)) {
                value = max(value, 0.0);
            }
            out[at] = value;
        }
    }
}

// ---------------------------------------------------------------------------
// column_sums: out[c] (+)= sum_r A(r, c) (masked), for the bias gradient.
// ---------------------------------------------------------------------------

const SUM_COLUMNS: u32 = 64u; // columns per workgroup
const SUM_LANES: u32 = 4u;    // invocations per column, each over every 4th row

@group(0) @binding(0) var<uniform> sum_params: GemmParams;
@group(0) @binding(1) var<storage, read> sum_source: array<f32>;
@group(0) @binding(2) var<storage, read> sum_mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> sum_out: array<f32>;

var<workgroup> lane_sums: array<f32, 256>; // SUM_LANES x SUM_COLUMNS

@compute @workgroup_size(64, 4)
fn column_sums(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let p = sum_params;
    let c = wid.x * SUM_COLUMNS + lid.x;
    var sum = 0.0;
    if (c < p.cols) {
        for (var r = lid.y; r < p.rows; r = r + SUM_LANES) {
            let at = r * p.a_row_stride + c;
            let value = sum_source[p.a_offset + at];
            if (!((p.flags & FLAG_MASK_A) != 0u) || sum_mask[p.mask_offset + at] > 0.0) {
                sum = sum + value;
            }
        }
    }
    lane_sums[lid.y * SUM_COLUMNS + lid.x] = sum;
    workgroupBarrier();
    if (lid.y == 0u && c < p.cols) {
        // The lanes combine in a fixed order: deterministic.
        var total = ((lane_sums[lid.x] + lane_sums[SUM_COLUMNS + lid.x])
            + lane_sums[2u * SUM_COLUMNS + lid.x]) + lane_sums[3u * SUM_COLUMNS + lid.x];
        let at = p.out_offset + c;
        if ((p.flags & FLAG_ACCUMULATE) != 0u) {
            total = sum_out[at] + total;
        }
        sum_out[at] = total;
    }
}
