// Row preparation, shared by every kernel family that reads embeddings.
//
// `prepare_rows` copies a chunk of rows (row-major f32, D values per row)
// into rows padded with zeros to a multiple of 4, so later kernels use vec4
// loads for any D, optionally divided by their L2 norm (rows of norm 0 stay
// 0). Zero padding changes no distance, dot product or norm. Beside each row
// it writes a vec4<u32> of metadata: (bits of ||x||, label, id, 0).
//
// The CPU mirror is `src/reference/rows.rs`; the host side is `src/rows.rs`.

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
    // Like source_offset, for the labels and ids; has_*: 0 when absent
    // (then 0 is written).
    label_offset: u32,
    id_offset: u32,
    has_labels: u32,
    has_ids: u32,
    // Index of this dispatch's first row within the chunk (large chunks
    // take several dispatches).
    row_base: u32,
    _pad0: u32,
}

const PREPARE_THREADS: u32 = 64u;

@group(0) @binding(0) var<uniform> params: PrepareParams;
@group(0) @binding(1) var<storage, read> source_rows: array<f32>;
@group(0) @binding(2) var<storage, read> source_labels: array<u32>;
@group(0) @binding(3) var<storage, read> source_ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> prepared_rows: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> row_meta: array<vec4<u32>>;

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
    return source_rows[params.source_offset + row * params.dim + k];
}

// One workgroup per row.
@compute @workgroup_size(64)
fn prepare_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let row = params.row_base + wid.x + wid.y * params.grid_width;
    if (row >= params.rows) {
        return;
    }
    let dim = params.dim;

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

    let divide = params.normalize != 0u && norm > 0.0;
    let divisor = select(1.0, norm, divide);
    let vec_dim = params.vec_dim;
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
        var label = 0u;
        if (params.has_labels != 0u) {
            label = source_labels[params.label_offset + row];
        }
        var id = 0u;
        if (params.has_ids != 0u) {
            id = source_ids[params.id_offset + row];
        }
        row_meta[row] = vec4<u32>(bitcast<u32>(norm), label, id, 0u);
    }
}
