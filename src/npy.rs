//! Reading and writing NumPy `.npy` files (format versions 1 to 3), for
//! embeddings and labels written by Python and mined results read back by
//! it.
//!
//! Supported: little-endian (or single-byte) arrays in C order of `f4`,
//! `f8` and `i1 u1 i2 u2` (embeddings or input features, e.g. pixels; the
//! small integers convert to `f32` exactly) and `i1 i2 i4 i8 u1 u2 u4 u8`
//! (labels). Anything else is an [`Error::Npy`] that says what the file
//! holds and what was expected.

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// An array read from a `.npy` file: its shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray<T> {
    /// The shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// The values in C (row-major) order.
    pub values: Vec<T>,
}

fn npy_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Npy {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The header of a `.npy` file.
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// The value of `key` in the header's Python dict literal.
fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let start = dict.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = dict[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else if let Some(quoted) = rest.strip_prefix('\'') {
        quoted.find('\'')? + 2
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<(Header, usize)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(npy_error(path, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let major = bytes[6];
    let (length, start) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(npy_error(path, format!("unsupported .npy version {major}"))),
    };
    let end = start + length;
    let text = bytes
        .get(start..end)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| npy_error(path, "truncated or unreadable header"))?;
    let descr = dict_value(text, "descr")
        .map(|d| d.trim_matches('\'').to_string())
        .ok_or_else(|| npy_error(path, "header has no 'descr'"))?;
    let fortran_order = dict_value(text, "fortran_order")
        .map(|v| v == "True")
        .ok_or_else(|| npy_error(path, "header has no 'fortran_order'"))?;
    let shape_text =
        dict_value(text, "shape").ok_or_else(|| npy_error(path, "header has no 'shape'"))?;
    let shape = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| npy_error(path, format!("unreadable shape {shape_text}")))?;
    Ok((
        Header {
            descr,
            fortran_order,
            shape,
        },
        end,
    ))
}

fn read_file(path: &Path) -> Result<(Header, Vec<u8>)> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| npy_error(path, format!("cannot read: {e}")))?;
    let (header, data_start) = parse_header(path, &bytes)?;
    if header.fortran_order {
        return Err(npy_error(
            path,
            "array is in Fortran order; save it with numpy.ascontiguousarray first",
        ));
    }
    let data = bytes.split_off(data_start);
    Ok((header, data))
}

/// Decodes `data` as `count` little-endian values of `size` bytes each.
fn decode<T>(
    path: &Path,
    data: &[u8],
    count: usize,
    size: usize,
    convert: impl Fn(&[u8]) -> T,
) -> Result<Vec<T>> {
    let needed = count
        .checked_mul(size)
        .ok_or_else(|| npy_error(path, "shape overflows"))?;
    if data.len() < needed {
        return Err(npy_error(
            path,
            format!(
                "holds {} bytes of data, its shape needs {needed}",
                data.len()
            ),
        ));
    }
    Ok(data[..needed].chunks_exact(size).map(convert).collect())
}

/// Reads a 2-D array of `f4`, `f8` or of 8- or 16-bit integers (all
/// converted to `f32`; the integers exactly): embeddings or input features,
/// one row per item.
pub fn read_f32_matrix(path: impl AsRef<Path>) -> Result<NpyArray<f32>> {
    let path = path.as_ref();
    let (header, data) = read_file(path)?;
    if header.shape.len() != 2 {
        return Err(npy_error(
            path,
            format!(
                "has shape {:?}; embeddings need 2 dimensions (rows, D)",
                header.shape
            ),
        ));
    }
    let count = header.shape.iter().product();
    let values = match header.descr.trim_start_matches(['<', '=', '|']) {
        "f4" => decode(path, &data, count, 4, |b| {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })?,
        "f8" => decode(path, &data, count, 8, |b| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(b);
            f64::from_le_bytes(raw) as f32
        })?,
        "u1" => decode(path, &data, count, 1, |b| f32::from(b[0]))?,
        "i1" => decode(path, &data, count, 1, |b| f32::from(b[0] as i8))?,
        "u2" => decode(path, &data, count, 2, |b| {
            f32::from(u16::from_le_bytes([b[0], b[1]]))
        })?,
        "i2" => decode(path, &data, count, 2, |b| {
            f32::from(i16::from_le_bytes([b[0], b[1]]))
        })?,
        _ => {
            return Err(npy_error(
                path,
                format!(
                    "has dtype {}; embeddings must be float32 (<f4) or float64 (<f8), or \
                     features of 8- or 16-bit integers (u1, i1, <u2, <i2)",
                    header.descr
                ),
            ))
        }
    };
    Ok(NpyArray {
        shape: header.shape,
        values,
    })
}

/// Reads a 1-D array of integers (any width, signed or not) as `u32`
/// labels; a negative or too large label is an error.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<u32>> {
    let path = path.as_ref();
    let (header, data) = read_file(path)?;
    if header.shape.len() != 1 {
        return Err(npy_error(
            path,
            format!("has shape {:?}; labels need 1 dimension", header.shape),
        ));
    }
    let count = header.shape[0];
    let descr = header.descr.trim_start_matches(['<', '=', '|']);
    let wide: Vec<i128> = match descr {
        "i1" => decode(path, &data, count, 1, |b| i128::from(b[0] as i8))?,
        "u1" => decode(path, &data, count, 1, |b| i128::from(b[0]))?,
        "i2" => decode(path, &data, count, 2, |b| {
            i128::from(i16::from_le_bytes([b[0], b[1]]))
        })?,
        "u2" => decode(path, &data, count, 2, |b| {
            i128::from(u16::from_le_bytes([b[0], b[1]]))
        })?,
        "i4" => decode(path, &data, count, 4, |b| {
            i128::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        })?,
        "u4" => decode(path, &data, count, 4, |b| {
            i128::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        })?,
        "i8" | "u8" => {
            let signed = descr == "i8";
            decode(path, &data, count, 8, |b| {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(b);
                if signed {
                    i128::from(i64::from_le_bytes(raw))
                } else {
                    i128::from(u64::from_le_bytes(raw))
                }
            })?
        }
        _ => {
            return Err(npy_error(
                path,
                format!("has dtype {}; labels must be integers", header.descr),
            ))
        }
    };
    wide.into_iter()
        .enumerate()
        .map(|(i, v)| {
            u32::try_from(v)
                .map_err(|_| npy_error(path, format!("label [{i}] = {v} is not in 0..2^32")))
        })
        .collect()
}

fn write_array(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so the data starts at a multiple of 64 bytes, ending in '\n'.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let length = u16::try_from(header.len()).map_err(|_| npy_error(path, "header too long"))?;
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(|e| npy_error(path, format!("cannot write: {e}")))
}

/// Writes `values` with `shape` as a float32 (`<f4`) array.
pub fn write_f32(path: impl AsRef<Path>, shape: &[usize], values: &[f32]) -> Result<()> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_array(path.as_ref(), "<f4", shape, &data)
}

/// Writes `values` with `shape` as an int64 (`<i8`) array, the dtype numpy
/// uses for indices.
pub fn write_i64(path: impl AsRef<Path>, shape: &[usize], values: &[i64]) -> Result<()> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_array(path.as_ref(), "<i8", shape, &data)
}
