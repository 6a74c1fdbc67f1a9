// The contrastive loss of Hadsell, Chopra & LeCun and its gradient.
//
// Entry points (all read rows prepared by shaders/rows.wgsl: padded to a
// multiple of 4 values, normalised where the loss asks, with metadata
// (bits of the norm, label, id, 0) per row):
//
// - all_pairs: every pair of a row of X with a row of Y (in batch: Y = X),
//   fused: the distance tile, the loss and the gradient coefficient c of
//   each pair, and the gradient sum_j c_ij (r_i - r_j) accumulated tile by
//   tile. No N x M matrix is stored: only 32 x 64 coefficients live in
//   workgroup memory at a time. Positive and negative pairs are kept apart
//   (c >= 0 for similar pairs, c <= 0 for dissimilar ones) so the
//   reduction's weights, known only after every pair is seen, are applied
//   by finish_gradient.
// - pairs_forward: one invocation per pair of a pair list (explicit pairs
//   or (i, j, y) index triples): distance, loss, coefficient.
// - count_rows, scan_offsets, fill_entries, sort_entries: build, for each
//   row, the list of its pairs in ascending pair order (CSR), so that
//   pairs_gradient sums every row's contributions in one fixed order,
//   without float atomics.
// - pairs_gradient: per row, sum of its pairs' c (r_i - r_other).
// - reduce_loss: the per-workgroup partial sums, in a fixed order, into the
//   loss, the pair counts and the weights of the reduction.
// - finish_gradient: weights, then the normalisation's Jacobian
//   (g - (g.u) u) / ||x||, written unpadded into the caller's layout.
//
// Every sum runs in a fixed order, so results are bitwise reproducible.
// The CPU mirror is src/reference/loss.rs; the host side is src/loss.rs.

const KIND_EUCLIDEAN: u32 = 0u;
const KIND_SQUARED_EUCLIDEAN: u32 = 1u;
const KIND_COSINE: u32 = 2u;

// The distance; one pipeline per kind.
override DISTANCE_KIND: u32 = KIND_EUCLIDEAN;

const F32_MAX: f32 = 3.40282347e38;
// Below this sum of squares some squares may have underflowed (2^-100).
const UNDERFLOW_RISK: f32 = 7.8886091e-31;

// The loss: l = s [d - m_pos]_+^p (similar), s [m_neg - d]_+^p (dissimilar).
struct LossShape {
    pos_margin: f32,
    neg_margin: f32,
    scale: f32,
    power: u32,
}

// Per-workgroup partial sums of the loss, by class.
struct Partial {
    pos_loss: f32,
    neg_loss: f32,
    pos_pairs: u32,
    neg_pairs: u32,
    pos_active: u32,
    neg_active: u32,
    _pad0: u32,
    _pad1: u32,
}

// (loss, g = dl/dd) of one pair.
fn loss_terms(shape: LossShape, d: f32, similar: bool) -> vec2<f32> {
    let hinge = select(shape.neg_margin - d, d - shape.pos_margin, similar);
    if (!(hinge > 0.0)) {
        return vec2<f32>(0.0);
    }
    let sign = select(-1.0, 1.0, similar);
    if (shape.power == 1u) {
        return vec2<f32>(shape.scale * hinge, sign * shape.scale);
    }
    return vec2<f32>(shape.scale * hinge * hinge, sign * 2.0 * shape.scale * hinge);
}

// The coefficient c of (r_i - r_j) in the gradient on prepared row r_i.
fn coefficient(shape: LossShape, d: f32, g: f32, similar: bool, zero_norm: bool) -> f32 {
    switch DISTANCE_KIND {
        case KIND_SQUARED_EUCLIDEAN: {
            return 2.0 * g;
        }
        case KIND_COSINE: {
            return select(g, 0.0, zero_norm);
        }
        default: {
            if (d > 0.0) {
                return clamp(g / d, -F32_MAX, F32_MAX);
            }
            // d = 0: the limit 2s of s d^2 / d where it exists, else the
            // zero subgradient.
            let has_limit = similar && shape.power == 2u && shape.pos_margin == 0.0;
            return select(0.0, 2.0 * shape.scale, has_limit);
        }
    }
}

// Kahan-compensated running sum: (sum, compensation).
fn kahan_add(running: vec2<f32>, value: f32) -> vec2<f32> {
    let y = value - running.y;
    let t = running.x + y;
    return vec2<f32>(t, (t - running.x) - y);
}

// ---------------------------------------------------------------------------
// all_pairs
// ---------------------------------------------------------------------------

struct AllPairsParams {
    // Rows of X and of Y in this dispatch.
    rows: u32,
    cols: u32,
    vec_dim: u32,
    // Global index of the first row of X and of Y (for skipping i == j).
    x_first: u32,
    y_first: u32,
    // 1: skip pairs with equal global index (in batch).
    skip_same_index: u32,
    // 1: skip pairs whose rows have equal ids.
    skip_same_id: u32,
    // 1: add to the gradient parts and partials already there (a later
    // chunk of Y); 0: overwrite.
    accumulate: u32,
    want_gradient: u32,
    want_loss: u32,
    // Index of this dispatch's first partial.
    partial_offset: u32,
    _pad0: u32,
    shape: LossShape,
}

const BLOCK_ROWS: u32 = 32u;   // rows of X per workgroup
const TILE_COLS: u32 = 64u;    // rows of Y per tile
const K_VECS: u32 = 4u;        // vec4s of D per distance step
const CHUNK_VECS: u32 = 32u;   // vec4s of the gradient per workgroup

@group(0) @binding(0) var<uniform> ap: AllPairsParams;
@group(0) @binding(1) var<storage, read> ap_rows_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> ap_rows_y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> ap_meta_x: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> ap_meta_y: array<vec4<u32>>;
// Per row of X: sum over similar pairs (vec_dim vec4s), then dissimilar.
@group(0) @binding(5) var<storage, read_write> ap_grad_parts: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> ap_partials: array<Partial>;

var<workgroup> ap_tile_x: array<vec4<f32>, 128>; // BLOCK_ROWS x K_VECS
var<workgroup> ap_tile_y: array<vec4<f32>, 256>; // TILE_COLS x K_VECS
var<workgroup> ap_coeff: array<f32, 2048>;       // BLOCK_ROWS x TILE_COLS
var<workgroup> ap_counts: array<u32, 256>;

fn ap_load_x(row: u32, v: u32) -> vec4<f32> {
    if (row < ap.rows && v < ap.vec_dim) {
        return ap_rows_x[row * ap.vec_dim + v];
    }
    return vec4<f32>(0.0);
}

fn ap_load_y(row: u32, v: u32) -> vec4<f32> {
    if (row < ap.cols && v < ap.vec_dim) {
        return ap_rows_y[row * ap.vec_dim + v];
    }
    return vec4<f32>(0.0);
}

fn ap_scaled_euclidean(i: u32, j: u32) -> f32 {
    let vec_dim = ap.vec_dim;
    var largest = vec4<f32>(0.0);
    for (var v = 0u; v < vec_dim; v = v + 1u) {
        largest = max(largest, abs(ap_rows_x[i * vec_dim + v] - ap_rows_y[j * vec_dim + v]));
    }
    let m = max(max(largest.x, largest.y), max(largest.z, largest.w));
    if (m == 0.0 || m > F32_MAX) {
        return m;
    }
    var sum = 0.0;
    for (var v = 0u; v < vec_dim; v = v + 1u) {
        let scaled = (ap_rows_x[i * vec_dim + v] - ap_rows_y[j * vec_dim + v]) / m;
        sum = sum + dot(scaled, scaled);
    }
    return m * sqrt(sum);
}

fn ap_considered(i: u32, j: u32) -> bool {
    if (i >= ap.rows || j >= ap.cols) {
        return false;
    }
    if (ap.skip_same_index != 0u && ap.x_first + i == ap.y_first + j) {
        return false;
    }
    if (ap.skip_same_id != 0u && ap_meta_x[i].z == ap_meta_y[j].z) {
        return false;
    }
    return true;
}

// Sums `value` over the workgroup in a fixed order, via ap_coeff.
fn ap_reduce_f32(flat: u32, value: f32) -> f32 {
    workgroupBarrier();
    ap_coeff[flat] = value;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (flat < stride) {
            ap_coeff[flat] = ap_coeff[flat] + ap_coeff[flat + stride];
        }
        workgroupBarrier();
    }
    return ap_coeff[0];
}

fn ap_reduce_u32(flat: u32, value: u32) -> u32 {
    workgroupBarrier();
    ap_counts[flat] = value;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (flat < stride) {
            ap_counts[flat] = ap_counts[flat] + ap_counts[flat + stride];
        }
        workgroupBarrier();
    }
    return ap_counts[0];
}

@compute @workgroup_size(16, 16)
fn all_pairs(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let vec_dim = ap.vec_dim;
    let shape = ap.shape;
    let row0 = wid.x * BLOCK_ROWS;
    let flat = lid.y * 16u + lid.x;
    let stats_here = ap.want_loss != 0u && wid.y == 0u;

    // Gradient phase: this invocation owns vec4 `grad_vec` of rows
    // row0 + group + 8a, a = 0..3.
    let group = flat / 32u;
    let grad_vec = wid.y * CHUNK_VECS + flat % 32u;
    let owns_gradient = ap.want_gradient != 0u && grad_vec < vec_dim;
    var own: array<vec4<f32>, 4>;
    var grad_pos: array<vec4<f32>, 4>;
    var grad_neg: array<vec4<f32>, 4>;
    if (owns_gradient) {
        for (var a = 0u; a < 4u; a = a + 1u) {
            own[a] = ap_load_x(row0 + group + 8u * a, grad_vec);
        }
    }

    var pos_loss = vec2<f32>(0.0);
    var neg_loss = vec2<f32>(0.0);
    var pos_pairs = 0u;
    var neg_pairs = 0u;
    var pos_active = 0u;
    var neg_active = 0u;

    for (var col0 = 0u; col0 < ap.cols; col0 = col0 + TILE_COLS) {
        // Distance phase: rows lid.y + 16a (a = 0, 1), columns lid.x + 16b.
        var acc: array<vec4<f32>, 2>;
        for (var k = 0u; k < vec_dim; k = k + K_VECS) {
            if (flat < 128u) {
                ap_tile_x[flat] = ap_load_x(row0 + flat / K_VECS, k + flat % K_VECS);
            }
            ap_tile_y[flat] = ap_load_y(col0 + flat / K_VECS, k + flat % K_VECS);
            workgroupBarrier();
            for (var kk = 0u; kk < K_VECS; kk = kk + 1u) {
                var ys: array<vec4<f32>, 4>;
                for (var b = 0u; b < 4u; b = b + 1u) {
                    ys[b] = ap_tile_y[(lid.x + 16u * b) * K_VECS + kk];
                }
                for (var a = 0u; a < 2u; a = a + 1u) {
                    let xa = ap_tile_x[(lid.y + 16u * a) * K_VECS + kk];
                    let d0 = xa - ys[0];
                    let d1 = xa - ys[1];
                    let d2 = xa - ys[2];
                    let d3 = xa - ys[3];
                    acc[a] = acc[a] + vec4<f32>(dot(d0, d0), dot(d1, d1), dot(d2, d2), dot(d3, d3));
                }
            }
            workgroupBarrier();
        }

        // Loss and coefficient of each pair of the tile.
        for (var a = 0u; a < 2u; a = a + 1u) {
            for (var b = 0u; b < 4u; b = b + 1u) {
                let li = lid.y + 16u * a;
                let lj = lid.x + 16u * b;
                let i = row0 + li;
                let j = col0 + lj;
                var c = 0.0;
                if (ap_considered(i, j)) {
                    let zero_norm = bitcast<f32>(ap_meta_x[i].x) == 0.0
                        || bitcast<f32>(ap_meta_y[j].x) == 0.0;
                    let sum = acc[a][b];
                    var d = sum;
                    if (DISTANCE_KIND == KIND_EUCLIDEAN) {
                        if (sum >= UNDERFLOW_RISK && sum <= F32_MAX) {
                            d = sqrt(sum);
                        } else {
                            d = ap_scaled_euclidean(i, j);
                        }
                    } else if (DISTANCE_KIND == KIND_COSINE) {
                        d = select(min(0.5 * sum, 2.0), 1.0, zero_norm);
                    }
                    let similar = ap_meta_x[i].y == ap_meta_y[j].y;
                    let terms = loss_terms(shape, d, similar);
                    c = coefficient(shape, d, terms.y, similar, zero_norm);
                    if (stats_here) {
                        let nonzero = select(0u, 1u, terms.x > 0.0);
                        if (similar) {
                            pos_loss = kahan_add(pos_loss, terms.x);
                            pos_pairs = pos_pairs + 1u;
                            pos_active = pos_active + nonzero;
                        } else {
                            neg_loss = kahan_add(neg_loss, terms.x);
                            neg_pairs = neg_pairs + 1u;
                            neg_active = neg_active + nonzero;
                        }
                    }
                }
                ap_coeff[li * TILE_COLS + lj] = c;
            }
        }
        workgroupBarrier();

        // Gradient phase: sum_j c_ij (r_i - r_j), similar and dissimilar
        // pairs apart, j in order.
        if (owns_gradient) {
            let cols_here = min(TILE_COLS, ap.cols - col0);
            for (var jj = 0u; jj < cols_here; jj = jj + 1u) {
                let other = ap_rows_y[(col0 + jj) * vec_dim + grad_vec];
                for (var a = 0u; a < 4u; a = a + 1u) {
                    let c = ap_coeff[(group + 8u * a) * TILE_COLS + jj];
                    let diff = own[a] - other;
                    grad_pos[a] = grad_pos[a] + max(c, 0.0) * diff;
                    grad_neg[a] = grad_neg[a] + min(c, 0.0) * diff;
                }
            }
        }
        workgroupBarrier();
    }

    if (owns_gradient) {
        for (var a = 0u; a < 4u; a = a + 1u) {
            let row = row0 + group + 8u * a;
            if (row < ap.rows) {
                let base = row * 2u * vec_dim + grad_vec;
                var pos = grad_pos[a];
                var neg = grad_neg[a];
                if (ap.accumulate != 0u) {
                    pos = pos + ap_grad_parts[base];
                    neg = neg + ap_grad_parts[base + vec_dim];
                }
                ap_grad_parts[base] = pos;
                ap_grad_parts[base + vec_dim] = neg;
            }
        }
    }

    if (stats_here) {
        var partial: Partial;
        partial.pos_loss = ap_reduce_f32(flat, pos_loss.x);
        partial.neg_loss = ap_reduce_f32(flat, neg_loss.x);
        partial.pos_pairs = ap_reduce_u32(flat, pos_pairs);
        partial.neg_pairs = ap_reduce_u32(flat, neg_pairs);
        partial.pos_active = ap_reduce_u32(flat, pos_active);
        partial.neg_active = ap_reduce_u32(flat, neg_active);
        if (flat == 0u) {
            let index = ap.partial_offset + wid.x;
            if (ap.accumulate != 0u) {
                let old = ap_partials[index];
                partial.pos_loss = partial.pos_loss + old.pos_loss;
                partial.neg_loss = partial.neg_loss + old.neg_loss;
                partial.pos_pairs = partial.pos_pairs + old.pos_pairs;
                partial.neg_pairs = partial.neg_pairs + old.neg_pairs;
                partial.pos_active = partial.pos_active + old.pos_active;
                partial.neg_active = partial.neg_active + old.neg_active;
            }
            ap_partials[index] = partial;
        }
    }
}

// ---------------------------------------------------------------------------
// pairs_forward
// ---------------------------------------------------------------------------

struct PairsParams {
    pairs: u32,
    vec_dim: u32,
    // 1: explicit pairs, pair p = (row p of X, row p of Y), its label in
    // the metadata of X; 0: pair p = pair_list[p] = (i, j, label, 0), both
    // rows of X (Y is bound to the same rows).
    explicit_pairs: u32,
    grid_width: u32,
    // First pair of this dispatch (large lists take several dispatches).
    pair_base: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    shape: LossShape,
}

const PAIR_THREADS: u32 = 64u;

@group(0) @binding(0) var<uniform> pf: PairsParams;
@group(0) @binding(1) var<storage, read> pf_rows_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> pf_rows_y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> pf_meta_x: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> pf_meta_y: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> pf_pair_list: array<vec4<u32>>;
// Per pair: (loss, coefficient c, 1 if similar else 0, distance).
@group(0) @binding(6) var<storage, read_write> pf_pair_values: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> pf_partials: array<Partial>;

var<workgroup> pf_scratch_f: array<f32, PAIR_THREADS>;
var<workgroup> pf_scratch_u: array<u32, PAIR_THREADS>;

fn pf_reduce_f32(local: u32, value: f32) -> f32 {
    workgroupBarrier();
    pf_scratch_f[local] = value;
    workgroupBarrier();
    for (var stride = PAIR_THREADS / 2u; stride > 0u; stride = stride / 2u) {
        if (local < stride) {
            pf_scratch_f[local] = pf_scratch_f[local] + pf_scratch_f[local + stride];
        }
        workgroupBarrier();
    }
    return pf_scratch_f[0];
}

fn pf_reduce_u32(local: u32, value: u32) -> u32 {
    workgroupBarrier();
    pf_scratch_u[local] = value;
    workgroupBarrier();
    for (var stride = PAIR_THREADS / 2u; stride > 0u; stride = stride / 2u) {
        if (local < stride) {
            pf_scratch_u[local] = pf_scratch_u[local] + pf_scratch_u[local + stride];
        }
        workgroupBarrier();
    }
    return pf_scratch_u[0];
}

// Euclidean distance of two prepared rows with scaling (see all_pairs).
fn pf_scaled_euclidean(i: u32, j: u32) -> f32 {
    let vec_dim = pf.vec_dim;
    var largest = vec4<f32>(0.0);
    for (var v = 0u; v < vec_dim; v = v + 1u) {
        largest = max(largest, abs(pf_rows_x[i * vec_dim + v] - pf_rows_y[j * vec_dim + v]));
    }
    let m = max(max(largest.x, largest.y), max(largest.z, largest.w));
    if (m == 0.0 || m > F32_MAX) {
        return m;
    }
    var sum = 0.0;
    for (var v = 0u; v < vec_dim; v = v + 1u) {
        let scaled = (pf_rows_x[i * vec_dim + v] - pf_rows_y[j * vec_dim + v]) / m;
        sum = sum + dot(scaled, scaled);
    }
    return m * sqrt(sum);
}

@compute @workgroup_size(64)
fn pairs_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let group_index = pf.pair_base / PAIR_THREADS + wid.x + wid.y * pf.grid_width;
    let p = group_index * PAIR_THREADS + local;
    let vec_dim = pf.vec_dim;
    var loss = 0.0;
    var similar = false;
    var valid = p < pf.pairs;
    var i = p;
    var j = p;
    if (valid) {
        if (pf.explicit_pairs != 0u) {
            similar = pf_meta_x[p].y != 0u;
        } else {
            let pair = pf_pair_list[p];
            i = pair.x;
            j = pair.y;
            similar = pair.z != 0u;
            // Label 0xffffffff: no pair (a miner found none); it counts
            // nowhere and its coefficient is 0.
            valid = pair.z != 0xffffffffu;
        }
    }
    if (valid) {
        var sum = 0.0;
        for (var v = 0u; v < vec_dim; v = v + 1u) {
            let diff = pf_rows_x[i * vec_dim + v] - pf_rows_y[j * vec_dim + v];
            sum = sum + dot(diff, diff);
        }
        let zero_norm = bitcast<f32>(pf_meta_x[i].x) == 0.0 || bitcast<f32>(pf_meta_y[j].x) == 0.0;
        var d = sum;
        if (DISTANCE_KIND == KIND_EUCLIDEAN) {
            if (sum >= UNDERFLOW_RISK && sum <= F32_MAX) {
                d = sqrt(sum);
            } else {
                d = pf_scaled_euclidean(i, j);
            }
        } else if (DISTANCE_KIND == KIND_COSINE) {
            d = select(min(0.5 * sum, 2.0), 1.0, zero_norm);
        }
        let terms = loss_terms(pf.shape, d, similar);
        let c = coefficient(pf.shape, d, terms.y, similar, zero_norm);
        loss = terms.x;
        pf_pair_values[p] = vec4<f32>(loss, c, select(0.0, 1.0, similar), d);
    } else if (p < pf.pairs) {
        pf_pair_values[p] = vec4<f32>(0.0);
    }
    let is_pos = valid && similar;
    let is_neg = valid && !similar;
    let nonzero = loss > 0.0;
    var partial: Partial;
    partial.pos_loss = pf_reduce_f32(local, select(0.0, loss, is_pos));
    partial.neg_loss = pf_reduce_f32(local, select(0.0, loss, is_neg));
    partial.pos_pairs = pf_reduce_u32(local, select(0u, 1u, is_pos));
    partial.neg_pairs = pf_reduce_u32(local, select(0u, 1u, is_neg));
    partial.pos_active = pf_reduce_u32(local, select(0u, 1u, is_pos && nonzero));
    partial.neg_active = pf_reduce_u32(local, select(0u, 1u, is_neg && nonzero));
    if (local == 0u) {
        pf_partials[group_index] = partial;
    }
}

// ---------------------------------------------------------------------------
// Rows' pair lists (CSR) for index lists: count, scan, fill, sort.
// ---------------------------------------------------------------------------

struct CsrParams {
    pairs: u32,
    rows: u32,
    grid_width: u32,
    // First pair (count_rows, fill_entries) or row (sort_entries) of this
    // dispatch.
    base: u32,
}

@group(0) @binding(0) var<uniform> csr: CsrParams;
@group(0) @binding(1) var<storage, read> csr_pair_list: array<vec4<u32>>;
// count_rows: pairs per row; fill_entries: slots taken so far per row.
@group(0) @binding(2) var<storage, read_write> csr_counters: array<atomic<u32>>;
// rows + 1 offsets: the pairs of row r are entries[offsets[r]..offsets[r+1]].
@group(0) @binding(3) var<storage, read_write> csr_offsets: array<u32>;
// Per entry: pair index * 2 + (0 if the row is the pair's first, 1 if second).
@group(0) @binding(4) var<storage, read_write> csr_entries: array<u32>;

fn csr_index(wid: vec3<u32>, local: u32) -> u32 {
    return csr.base + (wid.x + wid.y * csr.grid_width) * 64u + local;
}

@compute @workgroup_size(64)
fn count_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let p = csr_index(wid, local);
    if (p < csr.pairs) {
        let pair = csr_pair_list[p];
        atomicAdd(&csr_counters[pair.x], 1u);
        atomicAdd(&csr_counters[pair.y], 1u);
    }
}

var<workgroup> scan_scratch: array<u32, 256>;

// One workgroup: exclusive prefix sum of the counts into offsets, 256 rows
// at a time.
@compute @workgroup_size(256)
fn scan_offsets(@builtin(local_invocation_index) local: u32) {
    var carry = 0u;
    for (var base = 0u; base < csr.rows; base = base + 256u) {
        let r = base + local;
        var value = 0u;
        if (r < csr.rows) {
            value = atomicLoad(&csr_counters[r]);
        }
        scan_scratch[local] = value;
        workgroupBarrier();
        // Hillis-Steele inclusive scan.
        for (var stride = 1u; stride < 256u; stride = stride * 2u) {
            var add = 0u;
            if (local >= stride) {
                add = scan_scratch[local - stride];
            }
            workgroupBarrier();
            scan_scratch[local] = scan_scratch[local] + add;
            workgroupBarrier();
        }
        if (r < csr.rows) {
            csr_offsets[r + 1u] = carry + scan_scratch[local];
        }
        carry = carry + scan_scratch[255];
        workgroupBarrier();
    }
    if (local == 0u) {
        csr_offsets[0] = 0u;
    }
}

@compute @workgroup_size(64)
fn fill_entries(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let p = csr_index(wid, local);
    if (p < csr.pairs) {
        let pair = csr_pair_list[p];
        let first_slot = atomicAdd(&csr_counters[pair.x], 1u);
        csr_entries[csr_offsets[pair.x] + first_slot] = p * 2u;
        let second_slot = atomicAdd(&csr_counters[pair.y], 1u);
        csr_entries[csr_offsets[pair.y] + second_slot] = p * 2u + 1u;
    }
}

// fill_entries places a row's entries in whatever order the atomics gave;
// sorting each row's entries makes the order (and every sum) reproducible.
@compute @workgroup_size(64)
fn sort_entries(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let r = csr_index(wid, local);
    if (r >= csr.rows) {
        return;
    }
    let begin = csr_offsets[r];
    let end = csr_offsets[r + 1u];
    for (var a = begin + 1u; a < end; a = a + 1u) {
        let key = csr_entries[a];
        var b = a;
        while (b > begin && csr_entries[b - 1u] > key) {
            csr_entries[b] = csr_entries[b - 1u];
            b = b - 1u;
        }
        csr_entries[b] = key;
    }
}

// ---------------------------------------------------------------------------
// pairs_gradient
// ---------------------------------------------------------------------------

struct PairsGradientParams {
    rows: u32,
    vec_dim: u32,
    // 1: explicit pairs (row r is in pair r only, its partner is row r of
    // the other set); 0: index lists through the CSR.
    explicit_pairs: u32,
    grid_width: u32,
    // First row of this dispatch.
    row_base: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> pg: PairsGradientParams;
@group(0) @binding(1) var<storage, read> pg_rows_own: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> pg_rows_other: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> pg_offsets: array<u32>;
@group(0) @binding(4) var<storage, read> pg_entries: array<u32>;
@group(0) @binding(5) var<storage, read> pg_pair_list: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> pg_pair_values: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> pg_grad_parts: array<vec4<f32>>;

// One workgroup per row; invocations split the row's vec4s.
@compute @workgroup_size(64)
fn pairs_gradient(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let r = pg.row_base + wid.x + wid.y * pg.grid_width;
    if (r >= pg.rows) {
        return;
    }
    let vec_dim = pg.vec_dim;
    var begin = r;
    var end = r + 1u;
    if (pg.explicit_pairs == 0u) {
        begin = pg_offsets[r];
        end = pg_offsets[r + 1u];
    }
    for (var v = local; v < vec_dim; v = v + 64u) {
        let own = pg_rows_own[r * vec_dim + v];
        var pos = vec4<f32>(0.0);
        var neg = vec4<f32>(0.0);
        for (var e = begin; e < end; e = e + 1u) {
            var pair_index = e;
            var other = r;
            if (pg.explicit_pairs == 0u) {
                let entry = pg_entries[e];
                pair_index = entry / 2u;
                let pair = pg_pair_list[pair_index];
                other = select(pair.y, pair.x, entry % 2u == 1u);
            }
            let values = pg_pair_values[pair_index];
            let contribution = values.y * (own - pg_rows_other[other * vec_dim + v]);
            if (values.z != 0.0) {
                pos = pos + contribution;
            } else {
                neg = neg + contribution;
            }
        }
        pg_grad_parts[r * 2u * vec_dim + v] = pos;
        pg_grad_parts[r * 2u * vec_dim + vec_dim + v] = neg;
    }
}

// ---------------------------------------------------------------------------
// reduce_loss
// ---------------------------------------------------------------------------

struct ReduceParams {
    partials: u32,
    // 0 sum (and none), 1 mean, 2 mean_pos_neg, 3 mean_nonzero_pos_neg.
    reduction: u32,
    // 1: the partials count ordered pairs (i, j) and (j, i); halve.
    halve: u32,
    _pad0: u32,
}

// The reduced loss and what it was computed from; the layout of
// `LossTotals` in src/loss.rs.
struct Totals {
    loss: f32,
    pos_loss: f32,
    neg_loss: f32,
    pos_weight: f32,
    neg_weight: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // (low, high) 32-bit halves: similar pairs, dissimilar pairs, and of
    // those, the ones with loss > 0.
    counts: array<vec2<u32>, 4>,
}

@group(0) @binding(0) var<uniform> rl: ReduceParams;
@group(0) @binding(1) var<storage, read> rl_partials: array<Partial>;
@group(0) @binding(2) var<storage, read_write> rl_totals: Totals;

var<workgroup> rl_scratch_f: array<f32, 256>;
var<workgroup> rl_scratch_u: array<vec2<u32>, 256>;

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let low = a.x + b.x;
    return vec2<u32>(low, a.y + b.y + select(0u, 1u, low < a.x));
}

fn to_f32(count: vec2<u32>) -> f32 {
    return f32(count.y) * 4294967296.0 + f32(count.x);
}

fn inverse_or_zero(count: vec2<u32>) -> f32 {
    if (count.x == 0u && count.y == 0u) {
        return 0.0;
    }
    return 1.0 / to_f32(count);
}

fn rl_reduce_f32(local: u32, value: f32) -> f32 {
    workgroupBarrier();
    rl_scratch_f[local] = value;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (local < stride) {
            rl_scratch_f[local] = rl_scratch_f[local] + rl_scratch_f[local + stride];
        }
        workgroupBarrier();
    }
    return rl_scratch_f[0];
}

fn rl_reduce_u64(local: u32, value: vec2<u32>) -> vec2<u32> {
    workgroupBarrier();
    rl_scratch_u[local] = value;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (local < stride) {
            rl_scratch_u[local] = add64(rl_scratch_u[local], rl_scratch_u[local + stride]);
        }
        workgroupBarrier();
    }
    return rl_scratch_u[0];
}

fn halve64(count: vec2<u32>) -> vec2<u32> {
    return vec2<u32>((count.x >> 1u) | (count.y << 31u), count.y >> 1u);
}

@compute @workgroup_size(256)
fn reduce_loss(@builtin(local_invocation_index) local: u32) {
    var pos_loss = vec2<f32>(0.0);
    var neg_loss = vec2<f32>(0.0);
    var counts: array<vec2<u32>, 4>;
    for (var index = local; index < rl.partials; index = index + 256u) {
        let partial = rl_partials[index];
        pos_loss = kahan_add(pos_loss, partial.pos_loss);
        neg_loss = kahan_add(neg_loss, partial.neg_loss);
        counts[0] = add64(counts[0], vec2<u32>(partial.pos_pairs, 0u));
        counts[1] = add64(counts[1], vec2<u32>(partial.neg_pairs, 0u));
        counts[2] = add64(counts[2], vec2<u32>(partial.pos_active, 0u));
        counts[3] = add64(counts[3], vec2<u32>(partial.neg_active, 0u));
    }
    var totals: Totals;
    totals.pos_loss = rl_reduce_f32(local, pos_loss.x);
    totals.neg_loss = rl_reduce_f32(local, neg_loss.x);
    for (var c = 0u; c < 4u; c = c + 1u) {
        totals.counts[c] = rl_reduce_u64(local, counts[c]);
    }
    if (local != 0u) {
        return;
    }
    if (rl.halve != 0u) {
        totals.pos_loss = 0.5 * totals.pos_loss;
        totals.neg_loss = 0.5 * totals.neg_loss;
        for (var c = 0u; c < 4u; c = c + 1u) {
            totals.counts[c] = halve64(totals.counts[c]);
        }
    }
    switch rl.reduction {
        case 1u: {
            let w = inverse_or_zero(add64(totals.counts[0], totals.counts[1]));
            totals.pos_weight = w;
            totals.neg_weight = w;
        }
        case 2u: {
            totals.pos_weight = inverse_or_zero(totals.counts[0]);
            totals.neg_weight = inverse_or_zero(totals.counts[1]);
        }
        case 3u: {
            totals.pos_weight = inverse_or_zero(totals.counts[2]);
            totals.neg_weight = inverse_or_zero(totals.counts[3]);
        }
        default: {
            totals.pos_weight = 1.0;
            totals.neg_weight = 1.0;
        }
    }
    totals.loss = totals.pos_weight * totals.pos_loss + totals.neg_weight * totals.neg_loss;
    rl_totals = totals;
}

// ---------------------------------------------------------------------------
// finish_gradient
// ---------------------------------------------------------------------------

struct FinishParams {
    rows: u32,
    dim: u32,
    vec_dim: u32,
    // 1: the rows were normalised; apply (g - (g.u) u) / ||x||.
    normalize: u32,
    grid_width: u32,
    // Index of the first output value within the bound output range.
    out_offset: u32,
    // First row of this dispatch.
    row_base: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> fg: FinishParams;
@group(0) @binding(1) var<storage, read> fg_grad_parts: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> fg_rows: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> fg_meta: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> fg_totals: Totals;
@group(0) @binding(5) var<storage, read_write> fg_out: array<f32>;

var<workgroup> fg_scratch: array<f32, 64>;

fn fg_weighted(r: u32, v: u32) -> vec4<f32> {
    let base = r * 2u * fg.vec_dim + v;
    return fg_totals.pos_weight * fg_grad_parts[base]
        + fg_totals.neg_weight * fg_grad_parts[base + fg.vec_dim];
}

// One workgroup per row.
@compute @workgroup_size(64)
fn finish_gradient(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let r = fg.row_base + wid.x + wid.y * fg.grid_width;
    if (r >= fg.rows) {
        return;
    }
    let vec_dim = fg.vec_dim;
    var along = 0.0;
    var inverse_norm = 1.0;
    if (fg.normalize != 0u) {
        var partial = 0.0;
        for (var v = local; v < vec_dim; v = v + 64u) {
            partial = partial + dot(fg_weighted(r, v), fg_rows[r * vec_dim + v]);
        }
        fg_scratch[local] = partial;
        workgroupBarrier();
        for (var stride = 32u; stride > 0u; stride = stride / 2u) {
            if (local < stride) {
                fg_scratch[local] = fg_scratch[local] + fg_scratch[local + stride];
            }
            workgroupBarrier();
        }
        along = fg_scratch[0];
        let norm = bitcast<f32>(fg_meta[r].x);
        inverse_norm = select(0.0, 1.0 / norm, norm > 0.0);
    }
    for (var v = local; v < vec_dim; v = v + 64u) {
        var g = fg_weighted(r, v);
        if (fg.normalize != 0u) {
            g = (g - along * fg_rows[r * vec_dim + v]) * inverse_norm;
        }
        for (var lane = 0u; lane < 4u; lane = lane + 1u) {
            let k = v * 4u + lane;
            if (k < fg.dim) {
                fg_out[fg.out_offset + r * fg.dim + k] = g[lane];
            }
        }
    }
}
