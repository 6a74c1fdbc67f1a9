//! `.npy` reading and writing: round trips, files laid out as numpy writes
//! them, and a clear error for every kind of bad file.

use contrastive_wgpu::npy;
use contrastive_wgpu::Error;

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("contrastive-wgpu-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A file as numpy 1.x writes it: version 1.0, header padded to 64 bytes.
fn numpy_file(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn float32_and_float64_embeddings_and_integer_labels_are_read() {
    let values = [1.5f32, -2.0, 3.25, 0.0, 7.0, -0.5];
    let path = temp("f4.npy");
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&path, numpy_file("<f4", "(2, 3)", &data)).unwrap();
    let array = npy::read_f32_matrix(&path).unwrap();
    assert_eq!(array.shape, vec![2, 3]);
    assert_eq!(array.values, values);

    let path = temp("f8.npy");
    let data: Vec<u8> = values
        .iter()
        .flat_map(|&v| f64::from(v).to_le_bytes())
        .collect();
    std::fs::write(&path, numpy_file("<f8", "(3, 2)", &data)).unwrap();
    assert_eq!(npy::read_f32_matrix(&path).unwrap().values, values);

    for (descr, bytes) in [
        (
            "<i8",
            [3i64, 0, 7]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
        (
            "<i4",
            [3i32, 0, 7].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        ("|u1", vec![3u8, 0, 7]),
    ] {
        let path = temp(&format!("labels{}.npy", descr.replace(['<', '|'], "")));
        std::fs::write(&path, numpy_file(descr, "(3,)", &bytes)).unwrap();
        assert_eq!(npy::read_labels(&path).unwrap(), vec![3, 0, 7], "{descr}");
    }
}

#[test]
fn small_integer_feature_matrices_convert_to_f32_exactly() {
    let path = temp("u1.npy");
    std::fs::write(&path, numpy_file("|u1", "(2, 2)", &[0, 16, 255, 7])).unwrap();
    let array = npy::read_f32_matrix(&path).unwrap();
    assert_eq!(array.shape, vec![2, 2]);
    assert_eq!(array.values, vec![0.0, 16.0, 255.0, 7.0]);

    let path = temp("i1.npy");
    std::fs::write(&path, numpy_file("|i1", "(1, 2)", &[0x80, 0x7f])).unwrap();
    assert_eq!(
        npy::read_f32_matrix(&path).unwrap().values,
        vec![-128.0, 127.0]
    );

    let values = [-32768i16, 32767, 0];
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = temp("i2.npy");
    std::fs::write(&path, numpy_file("<i2", "(3, 1)", &data)).unwrap();
    assert_eq!(
        npy::read_f32_matrix(&path).unwrap().values,
        vec![-32768.0, 32767.0, 0.0]
    );
    let data: Vec<u8> = [65535u16, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = temp("u2.npy");
    std::fs::write(&path, numpy_file("<u2", "(1, 2)", &data)).unwrap();
    assert_eq!(
        npy::read_f32_matrix(&path).unwrap().values,
        vec![65535.0, 1.0]
    );
}

#[test]
fn written_files_read_back_and_follow_the_format() {
    let path = temp("out.npy");
    npy::write_f32(&path, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    // Data starts at a multiple of 64 bytes, as numpy requires.
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    assert_eq!(
        npy::read_f32_matrix(&path).unwrap().values,
        vec![1.0, 2.0, 3.0, 4.0]
    );
    let path = temp("indices.npy");
    npy::write_i64(&path, &[3], &[5, -1, 2]).unwrap();
    let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_string();
    assert!(text.contains("'descr': '<i8'") && text.contains("'shape': (3,)"));
}

fn reason(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Npy { reason, .. }) => reason,
        other => panic!("expected an npy error, got {other:?}"),
    }
}

#[test]
fn bad_files_are_clear_errors() {
    assert!(reason(npy::read_f32_matrix(temp("missing.npy"))).contains("cannot read"));
    let path = temp("int_embeddings.npy");
    std::fs::write(&path, numpy_file("<i8", "(1, 2)", &[0u8; 16])).unwrap();
    assert!(reason(npy::read_f32_matrix(&path)).contains("must be float32"));
    let path = temp("big_endian.npy");
    std::fs::write(&path, numpy_file(">f4", "(1, 1)", &[0u8; 4])).unwrap();
    assert!(reason(npy::read_f32_matrix(&path)).contains(">f4"));
    let path = temp("one_d.npy");
    std::fs::write(&path, numpy_file("<f4", "(4,)", &[0u8; 16])).unwrap();
    assert!(reason(npy::read_f32_matrix(&path)).contains("2 dimensions"));
    let path = temp("short.npy");
    std::fs::write(&path, numpy_file("<f4", "(4, 4)", &[0u8; 16])).unwrap();
    assert!(reason(npy::read_f32_matrix(&path)).contains("needs 64"));
    let path = temp("fortran.npy");
    let mut bytes = numpy_file("<f4", "(1, 1)", &[0u8; 4]);
    let at = bytes.windows(5).position(|w| w == b"False").unwrap();
    bytes[at..at + 5].copy_from_slice(b"True ");
    std::fs::write(&path, bytes).unwrap();
    assert!(reason(npy::read_f32_matrix(&path)).contains("Fortran"));
    let path = temp("not_npy.npy");
    std::fs::write(&path, b"hello, world").unwrap();
    assert!(reason(npy::read_f32_matrix(&path)).contains("magic"));
    let path = temp("negative.npy");
    std::fs::write(&path, numpy_file("<i8", "(1,)", &(-3i64).to_le_bytes())).unwrap();
    assert!(reason(npy::read_labels(&path)).contains("-3"));
    let path = temp("float_labels.npy");
    std::fs::write(&path, numpy_file("<f4", "(1,)", &[0u8; 4])).unwrap();
    assert!(reason(npy::read_labels(&path)).contains("integers"));
}
