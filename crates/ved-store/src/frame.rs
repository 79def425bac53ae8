//! On-disk framing: file headers and checksummed records.
//!
//! Every file opens with a 24-byte header: the magic `VEDSTORE`, a format
//! version (u16), the file's kind (u8), a reserved byte, the generation (u64)
//! and a CRC-32 of the preceding 20 bytes. A record is its payload's length
//! (u32), the payload's CRC-32 (u32), then the payload. All integers are
//! little-endian.

use std::fmt;

pub const MAGIC: &[u8; 8] = b"VEDSTORE";
/// The version this build writes. Version 2 adds binary schema and snapshot records
/// (`crate::bin`); version 1 files hold JSON records only, and are still read.
pub const VERSION: u16 = 2;
/// The oldest version this build reads.
pub const VERSION_MIN: u16 = 1;
pub const HEADER_LEN: usize = 24;
pub const RECORD_HEADER_LEN: usize = 8;
/// No record is larger; a length field above it is corruption, not a big record.
pub const RECORD_MAX: u32 = 256 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Manifest = 1,
    Checkpoint = 2,
    Log = 3,
}

impl FileKind {
    fn from_u8(b: u8) -> Option<FileKind> {
        Some(match b {
            1 => FileKind::Manifest,
            2 => FileKind::Checkpoint,
            3 => FileKind::Log,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FileKind::Manifest => "manifest",
            FileKind::Checkpoint => "checkpoint",
            FileKind::Log => "log",
        }
    }
}

/// Why a header or a record could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not a Ved store file at all.
    Foreign,
    /// A Ved store file of a version this build does not read.
    Version(u16),
    WrongKind {
        expected: FileKind,
        found: Option<FileKind>,
    },
    /// The file ends inside the header or a record.
    Truncated {
        offset: u64,
    },
    /// A checksum does not match.
    Checksum {
        offset: u64,
    },
    /// A length field is impossible.
    BadLength {
        offset: u64,
        len: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Foreign => f.write_str("not a Ved store file (no `VEDSTORE` header)"),
            FrameError::Version(v) => {
                write!(f, "store format version {v}, but this ved reads versions {VERSION_MIN} to {VERSION}")
            }
            FrameError::WrongKind { expected, found } => write!(
                f,
                "expected a {} file, found {}",
                expected.name(),
                found.map(|k| format!("a {} file", k.name())).unwrap_or_else(|| "an unknown kind".into())
            ),
            FrameError::Truncated { offset } => write!(f, "the file ends in the middle of a record at byte {offset}"),
            FrameError::Checksum { offset } => write!(f, "checksum mismatch in the record at byte {offset}"),
            FrameError::BadLength { offset, len } => {
                write!(f, "impossible record length {len} at byte {offset}")
            }
        }
    }
}

pub fn header(kind: FileKind, generation: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10] = kind as u8;
    h[12..20].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a file's header; returns its generation.
pub fn read_header(bytes: &[u8], expected: FileKind) -> Result<u64, FrameError> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(FrameError::Foreign);
    }
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Truncated { offset: 0 });
    }
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..20]) != crc {
        return Err(FrameError::Checksum { offset: 0 });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !(VERSION_MIN..=VERSION).contains(&version) {
        return Err(FrameError::Version(version));
    }
    let kind = FileKind::from_u8(bytes[10]);
    if kind != Some(expected) {
        return Err(FrameError::WrongKind { expected, found: kind });
    }
    Ok(u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")))
}

/// The format version of a file whose header [`read_header`] accepted.
pub fn version(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[8], bytes[9]])
}

/// Appends one framed record to `out`.
pub fn write_record(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Reads the record at `offset`; returns its payload and the offset after it.
pub fn read_record(bytes: &[u8], offset: usize) -> Result<(&[u8], usize), FrameError> {
    let at = offset as u64;
    let Some(head) = bytes.get(offset..offset + RECORD_HEADER_LEN) else {
        return Err(FrameError::Truncated { offset: at });
    };
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    if len > RECORD_MAX {
        return Err(FrameError::BadLength { offset: at, len });
    }
    let start = offset + RECORD_HEADER_LEN;
    let Some(payload) = bytes.get(start..start + len as usize) else {
        return Err(FrameError::Truncated { offset: at });
    };
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Checksum { offset: at });
    }
    Ok((payload, start + len as usize))
}
