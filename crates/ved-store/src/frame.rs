//! On-disk framing: file headers and checksummed records.
//!
//! Every file opens with a header: the magic `VEDSTORE`, a format version (u16), the
//! file's kind (u8), a reserved byte, the generation (u64), from version 3 the store's
//! 128-bit identity, and a CRC-32 of the bytes before it (24 bytes in all up to version
//! 2, 40 from version 3). A record is its payload's length (u32), the payload's CRC-32
//! (u32), then the payload. All integers are little-endian.

use std::fmt;

pub const MAGIC: &[u8; 8] = b"VEDSTORE";
/// The version this build writes. Version 2 adds binary schema and snapshot records
/// (`crate::bin`); version 3 adds the store's identity to every header. Version 1 files
/// hold JSON records only. All are still read.
pub const VERSION: u16 = 3;
/// The oldest version this build reads.
pub const VERSION_MIN: u16 = 1;
/// The first version whose headers carry the store's identity.
pub const VERSION_IDENTIFIED: u16 = 3;
/// The header's length in the version this build writes.
pub const HEADER_LEN: usize = 40;
/// The header's length in versions 1 and 2, which carry no identity.
pub const HEADER_LEN_V2: usize = 24;
pub const RECORD_HEADER_LEN: usize = 8;
/// No record is larger; a length field above it is corruption, not a big record.
pub const RECORD_MAX: u32 = 256 * 1024 * 1024;

/// A store's identity: 128 random bits drawn when the store is created, written into
/// the header of every file it writes, so that a file copied in from another store is
/// recognised as not belonging (its checksums alone are all valid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StoreId(pub [u8; 16]);

impl StoreId {
    /// A fresh identity from the operating system's random source.
    pub fn generate() -> Result<StoreId, String> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| format!("no random bytes for the store's identity: {e}"))?;
        Ok(StoreId(b))
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// How a store identity reads in a message; `None` is a store or file from before
/// identities (format 2 or older).
pub fn id_text(id: Option<StoreId>) -> String {
    match id {
        Some(id) => format!("id {id}"),
        None => "no id: written before stores had one".into(),
    }
}

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub generation: u64,
    /// The store that wrote the file; `None` before version 3.
    pub id: Option<StoreId>,
    /// Where the first record starts.
    pub len: usize,
}

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
    /// A well-formed file of another store: its header names another identity.
    OtherStore {
        found: Option<StoreId>,
        expected: Option<StoreId>,
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
            FrameError::OtherStore { found, expected } => write!(
                f,
                "its header (byte 0) says this file belongs to another store ({}), not this one ({}, as its manifest says)",
                id_text(*found),
                id_text(*expected)
            ),
        }
    }
}

/// A header for a file of the store `id`, in this build's version. Without an identity
/// (only the manifest of a store from before identities, rewritten in place until its
/// next compaction gives it one) the header is version 2's.
pub fn header(kind: FileKind, generation: u64, id: Option<StoreId>) -> Vec<u8> {
    let (version, len) = match id {
        Some(_) => (VERSION, HEADER_LEN),
        None => (2, HEADER_LEN_V2),
    };
    let mut h = vec![0u8; len];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&version.to_le_bytes());
    h[10] = kind as u8;
    h[12..20].copy_from_slice(&generation.to_le_bytes());
    if let Some(id) = id {
        h[20..36].copy_from_slice(&id.0);
    }
    let crc = crc32fast::hash(&h[..len - 4]);
    h[len - 4..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The header's length in `version`.
fn header_len(version: u16) -> usize {
    if version >= VERSION_IDENTIFIED {
        HEADER_LEN
    } else {
        HEADER_LEN_V2
    }
}

/// Whether the header of length `len` at the start of `bytes` has an intact checksum.
fn header_crc_ok(bytes: &[u8], len: usize) -> bool {
    match bytes.get(len - 4..len) {
        Some(c) => crc32fast::hash(&bytes[..len - 4]) == u32::from_le_bytes(c.try_into().expect("4 bytes")),
        None => false,
    }
}

/// Checks a file's header.
pub fn read_header(bytes: &[u8], expected: FileKind) -> Result<Header, FrameError> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(FrameError::Foreign);
    }
    if bytes.len() < HEADER_LEN_V2 {
        return Err(FrameError::Truncated { offset: 0 });
    }
    // The version says where the checksum is, so it is read before the checksum is checked:
    // a damaged version field makes the checksum land elsewhere and fail all the same.
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !(VERSION_MIN..=VERSION).contains(&version) {
        // A newer Ved's file says so; a damaged one is damage.
        if header_crc_ok(bytes, HEADER_LEN_V2) || header_crc_ok(bytes, HEADER_LEN) {
            return Err(FrameError::Version(version));
        }
        return Err(FrameError::Checksum { offset: 0 });
    }
    let len = header_len(version);
    if bytes.len() < len {
        return Err(FrameError::Truncated { offset: 0 });
    }
    if !header_crc_ok(bytes, len) {
        return Err(FrameError::Checksum { offset: 0 });
    }
    let kind = FileKind::from_u8(bytes[10]);
    if kind != Some(expected) {
        return Err(FrameError::WrongKind { expected, found: kind });
    }
    let generation = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let id = (version >= VERSION_IDENTIFIED).then(|| StoreId(bytes[20..36].try_into().expect("16 bytes")));
    Ok(Header { version, generation, id, len })
}

/// Checks that a header names the store `expected`. A file with an identity in a store
/// without one is foreign too: such a store's current files were all written before
/// identities, and only a compaction gives it one.
pub fn check_store(h: &Header, expected: Option<StoreId>) -> Result<(), FrameError> {
    if h.id == expected {
        Ok(())
    } else {
        Err(FrameError::OtherStore { found: h.id, expected })
    }
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
