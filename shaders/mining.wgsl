// Hard-negative mining, fused with the distance computation: no N x M
// distance matrix is stored.
//
// All entry points read rows prepared by shaders/rows.wgsl (padded to a
// multiple of 4, normalised where asked, metadata (norm bits, label, id, 0)).
// Candidates are compared by a key: the distance, or minus the similarity
// for Dot, mapped to a u32 that sorts like the float; ties go to the smaller
// index, so every result is deterministic.
//
// - batch_hard: per anchor, the farthest positive and the nearest negative,
//   64 x 64 distance tiles at a time, reduced across the workgroup.
// - topk_init, topk_filter, topk_merge, topk_finish: per query, the k
//   nearest negatives. For each chunk of the bank, topk_filter appends every
//   negative that beats the query's current k-th best to the query's
//   candidate list; topk_merge sorts those candidates (bitonic) and merges
//   them with the current best k into the next best k.
//
// The CPU mirror is src/reference/mining.rs; the host side is src/mining.rs.

const KIND_EUCLIDEAN: u32 = 0u;
const KIND_SQUARED_EUCLIDEAN: u32 = 1u;
const KIND_COSINE: u32 = 2u;
const KIND_DOT: u32 = 3u;

override DISTANCE_KIND: u32 = KIND_EUCLIDEAN;

const NONE: u32 = 0xffffffffu;
const F32_MAX: f32 = 3.40282347e38;
const UNDERFLOW_RISK: f32 = 7.8886091e-31; // 2^-100
const TILE: u32 = 64u;
const K_VECS: u32 = 4u;

// A float's bits mapped so that unsigned order is float order (-0 and +0
// map to the same key, as they compare equal).
fn orderable(value: f32) -> u32 {
    let bits = bitcast<u32>(select(value, 0.0, value == 0.0));
    return select(bits | 0x80000000u, ~bits, (bits & 0x80000000u) != 0u);
}

fn from_orderable(key: u32) -> f32 {
    return bitcast<f32>(select(~key, key & 0x7fffffffu, (key & 0x80000000u) != 0u));
}

// The key of a distance or similarity: smaller is closer.
fn closeness_key(value: f32) -> u32 {
    return orderable(select(value, -value, DISTANCE_KIND == KIND_DOT));
}

fn value_of_key(key: u32) -> f32 {
    let v = from_orderable(key);
    return select(v, -v, DISTANCE_KIND == KIND_DOT);
}

// (key, index) pairs in lexicographic order.
fn pair_less(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x < b.x || (a.x == b.x && a.y < b.y);
}

struct TileParams {
    // Rows of X and of Y in this dispatch.
    rows: u32,
    cols: u32,
    vec_dim: u32,
    // Global index of the first row of X and of Y.
    x_first: u32,
    y_first: u32,
    // 1: skip pairs of equal global index (X is Y); 1: skip equal ids.
    skip_same_index: u32,
    skip_same_id: u32,
    // batch_hard: 1 to merge with the results already in the output (a later
    // chunk of Y). topk_filter: candidates each query's list can hold.
    extra: u32,
}

@group(0) @binding(0) var<uniform> tp: TileParams;
@group(0) @binding(1) var<storage, read> rows_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> rows_y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> meta_x: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> meta_y: array<vec4<u32>>;

var<workgroup> tile_x: array<vec4<f32>, 256>;
var<workgroup> tile_y: array<vec4<f32>, 256>;

fn load_x(row: u32, v: u32) -> vec4<f32> {
    if (row < tp.rows && v < tp.vec_dim) {
        return rows_x[row * tp.vec_dim + v];
    }
    return vec4<f32>(0.0);
}

fn load_y(row: u32, v: u32) -> vec4<f32> {
    if (row < tp.cols && v < tp.vec_dim) {
        return rows_y[row * tp.vec_dim + v];
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

fn scaled_euclidean(row: u32, col: u32) -> f32 {
    let vec_dim = tp.vec_dim;
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

// The distance (or similarity) of rows `row` and `col` from the sum `acc`;
// the same formulas as shaders/distance.wgsl.
fn finish(acc: f32, row: u32, col: u32) -> f32 {
    switch DISTANCE_KIND {
        case KIND_EUCLIDEAN: {
            if (acc >= UNDERFLOW_RISK && acc <= F32_MAX) {
                return sqrt(acc);
            }
            return scaled_euclidean(row, col);
        }
        case KIND_COSINE: {
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

fn considered(i: u32, j: u32) -> bool {
    if (i >= tp.rows || j >= tp.cols) {
        return false;
    }
    if (tp.skip_same_index != 0u && tp.x_first + i == tp.y_first + j) {
        return false;
    }
    if (tp.skip_same_id != 0u && meta_x[i].z == meta_y[j].z) {
        return false;
    }
    return true;
}

// The 4 x 4 sums of one invocation's outputs of the 64 x 64 tile at
// (row0, col0): rows lid.y + 16a, columns lid.x + 16b. Every invocation of
// the workgroup must call it (it synchronises).
fn tile_sums(row0: u32, col0: u32, lid: vec3<u32>) -> array<vec4<f32>, 4> {
    let flat = lid.y * 16u + lid.x;
    var acc: array<vec4<f32>, 4>;
    for (var k = 0u; k < tp.vec_dim; k = k + K_VECS) {
        tile_x[flat] = load_x(row0 + flat / K_VECS, k + flat % K_VECS);
        tile_y[flat] = load_y(col0 + flat / K_VECS, k + flat % K_VECS);
        workgroupBarrier();
        for (var kk = 0u; kk < K_VECS; kk = kk + 1u) {
            var ys: array<vec4<f32>, 4>;
            for (var b = 0u; b < 4u; b = b + 1u) {
                ys[b] = tile_y[(lid.x + 16u * b) * K_VECS + kk];
            }
            for (var a = 0u; a < 4u; a = a + 1u) {
                let xa = tile_x[(lid.y + 16u * a) * K_VECS + kk];
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
    return acc;
}

// ---------------------------------------------------------------------------
// batch_hard
// ---------------------------------------------------------------------------

// Per anchor: (positive index, bits of its distance, negative index, bits of
// its distance): the layout of HardestPair in src/mining.rs.
@group(0) @binding(5) var<storage, read_write> hardest: array<vec4<u32>>;

var<workgroup> best_scratch: array<vec2<u32>, 1024>; // 64 rows x 16

// Whether candidate `a` is a better farthest positive than `b`.
fn farther(a: vec2<u32>, b: vec2<u32>) -> bool {
    if (a.y == NONE) {
        return false;
    }
    return b.y == NONE || a.x > b.x || (a.x == b.x && a.y < b.y);
}

// Whether candidate `a` is a better nearest negative than `b`.
fn nearer(a: vec2<u32>, b: vec2<u32>) -> bool {
    if (a.y == NONE) {
        return false;
    }
    return b.y == NONE || a.x < b.x || (a.x == b.x && a.y < b.y);
}

// Reduces one candidate per invocation to the best per row (lid.y + 16a
// for the row's 16 invocations), in a fixed order.
fn reduce_row(lid: vec3<u32>, candidates: array<vec2<u32>, 4>, positive: bool) -> array<vec2<u32>, 4> {
    for (var a = 0u; a < 4u; a = a + 1u) {
        best_scratch[(lid.y + 16u * a) * 16u + lid.x] = candidates[a];
    }
    workgroupBarrier();
    for (var stride = 8u; stride > 0u; stride = stride / 2u) {
        if (lid.x < stride) {
            for (var a = 0u; a < 4u; a = a + 1u) {
                let slot = (lid.y + 16u * a) * 16u + lid.x;
                let other = best_scratch[slot + stride];
                let mine = best_scratch[slot];
                let take = select(nearer(other, mine), farther(other, mine), positive);
                if (take) {
                    best_scratch[slot] = other;
                }
            }
        }
        workgroupBarrier();
    }
    var best: array<vec2<u32>, 4>;
    for (var a = 0u; a < 4u; a = a + 1u) {
        best[a] = best_scratch[(lid.y + 16u * a) * 16u];
    }
    workgroupBarrier();
    return best;
}

@compute @workgroup_size(16, 16)
fn batch_hard(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row0 = wid.x * TILE;
    var positives: array<vec2<u32>, 4>;
    var negatives: array<vec2<u32>, 4>;
    for (var a = 0u; a < 4u; a = a + 1u) {
        positives[a] = vec2<u32>(0u, NONE);
        negatives[a] = vec2<u32>(0u, NONE);
    }
    for (var col0 = 0u; col0 < tp.cols; col0 = col0 + TILE) {
        let acc = tile_sums(row0, col0, lid);
        for (var a = 0u; a < 4u; a = a + 1u) {
            let i = row0 + lid.y + 16u * a;
            for (var b = 0u; b < 4u; b = b + 1u) {
                let j = col0 + lid.x + 16u * b;
                if (considered(i, j)) {
                    let candidate = vec2<u32>(closeness_key(finish(acc[a][b], i, j)), tp.y_first + j);
                    if (meta_x[i].y == meta_y[j].y) {
                        if (farther(candidate, positives[a])) {
                            positives[a] = candidate;
                        }
                    } else if (nearer(candidate, negatives[a])) {
                        negatives[a] = candidate;
                    }
                }
            }
        }
    }
    let best_positive = reduce_row(lid, positives, true);
    let best_negative = reduce_row(lid, negatives, false);
    if (lid.x == 0u) {
        for (var a = 0u; a < 4u; a = a + 1u) {
            let i = row0 + lid.y + 16u * a;
            if (i < tp.rows) {
                var positive = best_positive[a];
                var negative = best_negative[a];
                if (tp.extra != 0u) {
                    // Merge with the earlier chunks of Y (their indices are
                    // smaller, so ties keep them).
                    let old = hardest[i];
                    let old_positive = vec2<u32>(closeness_key(bitcast<f32>(old.y)), old.x);
                    let old_negative = vec2<u32>(closeness_key(bitcast<f32>(old.w)), old.z);
                    if (!farther(positive, old_positive)) {
                        positive = old_positive;
                    }
                    if (!nearer(negative, old_negative)) {
                        negative = old_negative;
                    }
                }
                let inf = 0x7f800000u; // +inf
                let positive_value = select(bitcast<u32>(value_of_key(positive.x)), inf, positive.y == NONE);
                let negative_value = select(bitcast<u32>(value_of_key(negative.x)), inf, negative.y == NONE);
                hardest[i] = vec4<u32>(positive.y, positive_value, negative.y, negative_value);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// top-k negatives
// ---------------------------------------------------------------------------

// Per query: the current k-th best (key, index); (NONE, NONE) until k are
// known.
@group(0) @binding(5) var<storage, read> thresholds: array<vec2<u32>>;
// Per query: candidates appended so far for this chunk of the bank.
@group(0) @binding(6) var<storage, read_write> candidate_counts: array<atomic<u32>>;
// Per query, `tp.extra` slots of (key, global bank index).
@group(0) @binding(7) var<storage, read_write> candidates: array<vec2<u32>>;

// One 64 x 64 tile of queries x bank rows: every negative that beats the
// query's current k-th best joins its candidates. A chunk holds at most
// `capacity` bank rows, so the list cannot overflow; the order of appends is
// arbitrary, but topk_merge sorts them by (key, index).
@compute @workgroup_size(16, 16)
fn topk_filter(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let acc = tile_sums(row0, col0, lid);
    for (var a = 0u; a < 4u; a = a + 1u) {
        let i = row0 + lid.y + 16u * a;
        for (var b = 0u; b < 4u; b = b + 1u) {
            let j = col0 + lid.x + 16u * b;
            if (considered(i, j) && meta_x[i].y != meta_y[j].y) {
                let candidate = vec2<u32>(closeness_key(finish(acc[a][b], i, j)), tp.y_first + j);
                if (pair_less(candidate, thresholds[i])) {
                    let slot = atomicAdd(&candidate_counts[i], 1u);
                    if (slot < tp.extra) {
                        candidates[i * tp.extra + slot] = candidate;
                    }
                }
            }
        }
    }
}

struct ListParams {
    // Queries in this block.
    rows: u32,
    k: u32,
    // Candidate slots per query (a power of two).
    capacity: u32,
    grid_width: u32,
    // First query of this dispatch.
    row_base: u32,
    // topk_finish: index (in Neighbors) of the block's first output within
    // the bound output range; 1 if the distance is a similarity.
    out_offset: u32,
    similarity: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> lp: ListParams;
@group(0) @binding(1) var<storage, read_write> merge_counts: array<atomic<u32>>;
// Candidate lists (topk_merge) and each anchor's negatives (semi-hard),
// sorted in place by bitonic_sort.
@group(0) @binding(2) var<storage, read_write> sortable: array<vec2<u32>>;
// The best k of each query so far, sorted; merged into list_out.
@group(0) @binding(3) var<storage, read> list_in: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> list_out: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> merge_thresholds: array<vec2<u32>>;

var<workgroup> merge_count: u32;

// Sorts sortable[base .. base + size) by (key, index), ascending, in place
// (bitonic network). `size` is a power of two, the same for the whole
// workgroup of 256, and every invocation must call this (it synchronises).
fn bitonic_sort(base: u32, size: u32, local: u32) {
    for (var block = 2u; block <= size; block = block * 2u) {
        for (var stride = block / 2u; stride > 0u; stride = stride / 2u) {
            for (var t = local; t < size / 2u; t = t + 256u) {
                let i = 2u * stride * (t / stride) + t % stride;
                let j = i + stride;
                let ascending = (i & block) == 0u;
                let a = sortable[base + i];
                let b = sortable[base + j];
                if (pair_less(b, a) == ascending) {
                    sortable[base + i] = b;
                    sortable[base + j] = a;
                }
            }
            storageBarrier();
        }
    }
}

// One workgroup per query: sort the chunk's candidates (bitonic, in place)
// and merge them with the best k so far.
@compute @workgroup_size(256)
fn topk_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let q = lp.row_base + wid.x + wid.y * lp.grid_width;
    if (q >= lp.rows) {
        return;
    }
    if (local == 0u) {
        merge_count = min(atomicLoad(&merge_counts[q]), lp.capacity);
    }
    let count = workgroupUniformLoad(&merge_count);
    let base = q * lp.capacity;
    var size = 1u;
    while (size < count) {
        size = size * 2u;
    }
    for (var t = count + local; t < size; t = t + 256u) {
        sortable[base + t] = vec2<u32>(NONE, NONE);
    }
    storageBarrier();
    bitonic_sort(base, size, local);
    // Merge path: output t takes i from the old list and t - i from the
    // candidates, i the smallest with candidates[t - i - 1] < old[i].
    let k = lp.k;
    let old = q * k;
    for (var t = local; t < k; t = t + 256u) {
        var lo = select(0u, t - count, t > count);
        var hi = min(t, k);
        while (lo < hi) {
            let mid = (lo + hi) / 2u;
            let j = t - mid;
            if (j > 0u && mid < k && pair_less(list_in[old + mid], sortable[base + j - 1u])) {
                lo = mid + 1u;
            } else {
                hi = mid;
            }
        }
        let i = lo;
        let j = t - i;
        var next: vec2<u32>;
        if (i < k && (j >= count || pair_less(list_in[old + i], sortable[base + j]))) {
            next = list_in[old + i];
        } else {
            next = sortable[base + j];
        }
        list_out[old + t] = next;
    }
    storageBarrier();
    if (local == 0u) {
        merge_thresholds[q] = list_out[old + k - 1u];
        atomicStore(&merge_counts[q], 0u);
    }
}

@group(0) @binding(1) var<storage, read_write> init_counts: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read_write> init_list: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> init_thresholds: array<vec2<u32>>;

// Per query of the block: an empty best-k list and threshold.
@compute @workgroup_size(64)
fn topk_init(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let q = lp.row_base + wid.x + wid.y * lp.grid_width;
    if (q >= lp.rows) {
        return;
    }
    for (var t = local; t < lp.k; t = t + 64u) {
        init_list[q * lp.k + t] = vec2<u32>(NONE, NONE);
    }
    if (local == 0u) {
        init_thresholds[q] = vec2<u32>(NONE, NONE);
        atomicStore(&init_counts[q], 0u);
    }
}

@group(0) @binding(1) var<storage, read> finish_list: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> neighbors: array<vec2<u32>>;

// Per query: the best k as (index, bits of the distance), padded with
// (NONE, +inf), or -inf for a similarity.
@compute @workgroup_size(64)
fn topk_finish(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let q = lp.row_base + wid.x + wid.y * lp.grid_width;
    if (q >= lp.rows) {
        return;
    }
    let padding = select(0x7f800000u, 0xff800000u, lp.similarity != 0u);
    for (var t = local; t < lp.k; t = t + 64u) {
        let entry = finish_list[q * lp.k + t];
        var out = vec2<u32>(NONE, padding);
        if (entry.y != NONE) {
            let key_value = from_orderable(entry.x);
            out = vec2<u32>(entry.y, bitcast<u32>(select(key_value, -key_value, lp.similarity != 0u)));
        }
        neighbors[lp.out_offset + q * lp.k + t] = out;
    }
}

// ---------------------------------------------------------------------------
// pair-distance histograms
// ---------------------------------------------------------------------------

// Ascending bin edges e_0 < ... < e_B (tp.extra = B).
@group(0) @binding(5) var<storage, read> edges: array<f32>;
// Counts of this dispatch, similar pairs then dissimilar, B + 2 each:
// [values below e_0, B bins [e_(t-1), e_t), values at or above e_B].
@group(0) @binding(6) var<storage, read_write> histogram: array<atomic<u32>>;

// The number of edges at or below `value`: its slot in a histogram row.
fn bin_of(value: f32) -> u32 {
    var lo = 0u;
    var hi = tp.extra + 1u;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (edges[mid] <= value) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// One 64 x 64 tile of pairs into the histograms. In batch (skip_same_index)
// each unordered pair counts once (i < j).
@compute @workgroup_size(16, 16)
fn pair_histogram(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let acc = tile_sums(row0, col0, lid);
    let stride = tp.extra + 2u;
    for (var a = 0u; a < 4u; a = a + 1u) {
        let i = row0 + lid.y + 16u * a;
        for (var b = 0u; b < 4u; b = b + 1u) {
            let j = col0 + lid.x + 16u * b;
            let once = tp.skip_same_index == 0u || tp.x_first + i < tp.y_first + j;
            if (considered(i, j) && once) {
                let similar = meta_x[i].y == meta_y[j].y;
                let slot = select(stride, 0u, similar) + bin_of(finish(acc[a][b], i, j));
                atomicAdd(&histogram[slot], 1u);
            }
        }
    }
}

struct AccumulateParams {
    entries: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> accumulate_params: AccumulateParams;
@group(0) @binding(1) var<storage, read_write> dispatch_counts: array<u32>;
// (low, high) 32-bit halves of the running totals.
@group(0) @binding(2) var<storage, read_write> totals64: array<vec2<u32>>;

// Adds one dispatch's 32-bit counts to the 64-bit totals and clears them,
// so no count overflows whatever the number of pairs.
@compute @workgroup_size(64)
fn accumulate_histogram(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t < accumulate_params.entries) {
        let add = dispatch_counts[t];
        let old = totals64[t];
        let low = old.x + add;
        totals64[t] = vec2<u32>(low, old.y + select(0u, 1u, low < old.x));
        dispatch_counts[t] = 0u;
    }
}

// ---------------------------------------------------------------------------
// hardest_to_pairs: batch-hard results as an index list for the loss
// ---------------------------------------------------------------------------

struct ConvertParams {
    rows: u32,
    grid_width: u32,
    row_base: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> cp: ConvertParams;
@group(0) @binding(1) var<storage, read> mined: array<vec4<u32>>;
// Two index pairs per anchor: (a, positive, 1, 0), (a, negative, 0, 0);
// label 0xffffffff (no pair) where the miner found none.
@group(0) @binding(2) var<storage, read_write> mined_pairs: array<vec4<u32>>;

@compute @workgroup_size(64)
fn hardest_to_pairs(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let a = cp.row_base + (wid.x + wid.y * cp.grid_width) * 64u + local;
    if (a >= cp.rows) {
        return;
    }
    let hard = mined[a];
    let positive = select(hard.x, a, hard.x == NONE);
    let negative = select(hard.z, a, hard.z == NONE);
    mined_pairs[2u * a] = vec4<u32>(a, positive, select(1u, NONE, hard.x == NONE), 0u);
    mined_pairs[2u * a + 1u] = vec4<u32>(a, negative, select(0u, NONE, hard.z == NONE), 0u);
}

// ---------------------------------------------------------------------------
// semi-hard negatives (TF Addons' semantics), without B^3 memory
// ---------------------------------------------------------------------------

// semi_hard_keys: the key of every considered pair of a block of anchors
// (NONE where the pair is not considered): block x cols.
@group(0) @binding(5) var<storage, read_write> pair_keys: array<u32>;

@compute @workgroup_size(16, 16)
fn semi_hard_keys(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let acc = tile_sums(row0, col0, lid);
    for (var a = 0u; a < 4u; a = a + 1u) {
        let i = row0 + lid.y + 16u * a;
        for (var b = 0u; b < 4u; b = b + 1u) {
            let j = col0 + lid.x + 16u * b;
            if (i < tp.rows && j < tp.cols) {
                var key = NONE;
                if (considered(i, j)) {
                    key = closeness_key(finish(acc[a][b], i, j));
                }
                pair_keys[i * tp.cols + j] = key;
            }
        }
    }
}

struct SemiHardParams {
    // Anchors in this block, rows of the batch, sorted-list stride (a power
    // of two at least cols).
    rows: u32,
    cols: u32,
    stride: u32,
    grid_width: u32,
    row_base: u32,
    // Anchor-positive pairs of this block (semi_hard_select).
    pairs: u32,
    // 1: only negatives with d_ap < d_an < d_ap + margin.
    use_margin: u32,
    margin: f32,
    // Global index of the block's first anchor.
    anchor_first: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> sp: SemiHardParams;
@group(0) @binding(1) var<storage, read> sh_keys: array<u32>;
@group(0) @binding(3) var<storage, read> sh_meta_x: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> sh_meta_y: array<vec4<u32>>;

// One workgroup per anchor: its negatives, sorted (bitonic, in place).
@compute @workgroup_size(256)
fn semi_hard_sort(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let a = sp.row_base + wid.x + wid.y * sp.grid_width;
    if (a >= sp.rows) {
        return;
    }
    let base = a * sp.stride;
    for (var t = local; t < sp.stride; t = t + 256u) {
        var entry = vec2<u32>(NONE, NONE);
        if (t < sp.cols) {
            let key = sh_keys[a * sp.cols + t];
            if (key != NONE && sh_meta_x[a].y != sh_meta_y[t].y) {
                entry = vec2<u32>(key, t);
            }
        }
        sortable[base + t] = entry;
    }
    storageBarrier();
    bitonic_sort(base, sp.stride, local);
}

// (anchor within the block, positive) per pair in; (anchor, positive,
// negative, bits of d_an) out.
@group(0) @binding(5) var<storage, read> sh_pairs: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read_write> sh_out: array<vec4<u32>>;

// The first sorted negative of `base` (count entries) whose key is above
// `key` (or at least `key` when `inclusive`).
fn first_above(base: u32, count: u32, key: u32, inclusive: bool) -> u32 {
    var lo = 0u;
    var hi = count;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        let k = sortable[base + mid].x;
        if (k < key || (!inclusive && k == key)) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return lo;
}

@compute @workgroup_size(64)
fn semi_hard_select(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let t = sp.row_base + (wid.x + wid.y * sp.grid_width) * 64u + local;
    if (t >= sp.pairs) {
        return;
    }
    let pair = sh_pairs[t];
    let a = pair.x;
    let base = a * sp.stride;
    // The number of negatives: entries before the first (NONE, NONE).
    let count = first_above(base, sp.cols, NONE, true);
    let key_ap = sh_keys[a * sp.cols + pair.y];
    var chosen = vec2<u32>(NONE, NONE);
    let outside = first_above(base, count, key_ap, false);
    if (sp.use_margin != 0u) {
        // In value space (distance, or minus the similarity), d_an < d_ap + m.
        let limit = orderable(from_orderable(key_ap) + sp.margin);
        if (outside < count && sortable[base + outside].x < limit) {
            chosen = sortable[base + outside];
        }
    } else if (outside < count) {
        chosen = sortable[base + outside];
    } else if (count > 0u) {
        // No negative is farther: the farthest one, smallest index on ties.
        let farthest = sortable[base + count - 1u].x;
        chosen = sortable[base + first_above(base, count, farthest, true)];
    }
    var distance = 0x7f800000u;
    if (chosen.y != NONE) {
        distance = bitcast<u32>(value_of_key(chosen.x));
    }
    sh_out[t] = vec4<u32>(sp.anchor_first + a, pair.y, chosen.y, distance);
}

// ---------------------------------------------------------------------------
// pair-margin mining: similar pairs farther than t_pos, dissimilar pairs
// closer than t_neg, as a compact list in (i, j) order
// ---------------------------------------------------------------------------

struct MarginParams {
    // The bar for similar pairs (qualify when farther) and for dissimilar
    // pairs (qualify when closer), as keys.
    pos_key: u32,
    neg_key: u32,
    // Column tiles per row of the block.
    col_tiles: u32,
    // Where this block's pairs start in the output, and the output's
    // capacity (pairs past it are counted, not written).
    out_base: u32,
    capacity: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(5) var<uniform> mp: MarginParams;
// Qualifying pairs per (row, column tile), then (margin_scan) their
// exclusive prefix sums in (row, tile) order, i.e. (i, j) order.
@group(0) @binding(6) var<storage, read_write> tile_counts: array<u32>;
// 4 u32 per pair: i, j, label (1 similar, 0 dissimilar), 0.
@group(0) @binding(7) var<storage, read_write> margin_pairs: array<vec4<u32>>;

// Per tile row: which of its 64 columns qualify (2 words).
var<workgroup> qualifying: array<atomic<u32>, 128>;

// Marks this invocation's qualifying pairs of the tile in `qualifying`.
fn mark_qualifying(row0: u32, col0: u32, lid: vec3<u32>, acc: array<vec4<f32>, 4>) {
    let flat = lid.y * 16u + lid.x;
    if (flat < 128u) {
        atomicStore(&qualifying[flat], 0u);
    }
    workgroupBarrier();
    for (var a = 0u; a < 4u; a = a + 1u) {
        let li = lid.y + 16u * a;
        let i = row0 + li;
        for (var b = 0u; b < 4u; b = b + 1u) {
            let lj = lid.x + 16u * b;
            let j = col0 + lj;
            if (considered(i, j) && tp.x_first + i < tp.y_first + j) {
                let key = closeness_key(finish(acc[a][b], i, j));
                let similar = meta_x[i].y == meta_y[j].y;
                if ((similar && key > mp.pos_key) || (!similar && key < mp.neg_key)) {
                    atomicOr(&qualifying[li * 2u + lj / 32u], 1u << (lj % 32u));
                }
            }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(16, 16)
fn margin_count(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let acc = tile_sums(row0, col0, lid);
    mark_qualifying(row0, col0, lid, acc);
    let flat = lid.y * 16u + lid.x;
    if (flat < TILE && row0 + flat < tp.rows) {
        let count = countOneBits(atomicLoad(&qualifying[flat * 2u]))
            + countOneBits(atomicLoad(&qualifying[flat * 2u + 1u]));
        tile_counts[(row0 + flat) * mp.col_tiles + wid.x] = count;
    }
}

var<workgroup> margin_scan_scratch: array<u32, 256>;

// One workgroup: exclusive prefix sums of tile_counts (rows x col_tiles
// entries) in place; the total goes to entry rows x col_tiles.
@compute @workgroup_size(256)
fn margin_scan(@builtin(local_invocation_index) local: u32) {
    let entries = tp.rows * mp.col_tiles;
    var carry = 0u;
    for (var base = 0u; base < entries; base = base + 256u) {
        let t = base + local;
        var value = 0u;
        if (t < entries) {
            value = tile_counts[t];
        }
        margin_scan_scratch[local] = value;
        workgroupBarrier();
        for (var stride = 1u; stride < 256u; stride = stride * 2u) {
            var add = 0u;
            if (local >= stride) {
                add = margin_scan_scratch[local - stride];
            }
            workgroupBarrier();
            margin_scan_scratch[local] = margin_scan_scratch[local] + add;
            workgroupBarrier();
        }
        if (t < entries) {
            tile_counts[t] = carry + margin_scan_scratch[local] - value;
        }
        carry = carry + margin_scan_scratch[255];
        workgroupBarrier();
    }
    if (local == 0u) {
        tile_counts[entries] = carry;
    }
}

@compute @workgroup_size(16, 16)
fn margin_fill(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let acc = tile_sums(row0, col0, lid);
    mark_qualifying(row0, col0, lid, acc);
    for (var a = 0u; a < 4u; a = a + 1u) {
        let li = lid.y + 16u * a;
        let i = row0 + li;
        if (i >= tp.rows) {
            continue;
        }
        let words = vec2<u32>(atomicLoad(&qualifying[li * 2u]), atomicLoad(&qualifying[li * 2u + 1u]));
        for (var b = 0u; b < 4u; b = b + 1u) {
            let lj = lid.x + 16u * b;
            let word = words[lj / 32u];
            let bit = 1u << (lj % 32u);
            if ((word & bit) != 0u) {
                // Rank of this column among the row's qualifying columns of
                // the tile.
                var rank = countOneBits(word & (bit - 1u));
                if (lj >= 32u) {
                    rank = rank + countOneBits(words.x);
                }
                let position = mp.out_base + tile_counts[i * mp.col_tiles + wid.x] + rank;
                if (position < mp.capacity) {
                    let j = col0 + lj;
                    let similar = meta_x[i].y == meta_y[j].y;
                    margin_pairs[position] = vec4<u32>(tp.x_first + i, tp.y_first + j, select(0u, 1u, similar), 0u);
                }
            }
        }
    }
}
