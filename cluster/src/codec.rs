//! Versioned binary encoding of everything stored on disk or sent to peers.
//!
//! Every value is `[FORMAT_VERSION][postcard bytes]`. A reader that meets another version
//! refuses it instead of misreading it, so a format change can add an upgrade path later.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The current format version byte.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("value is empty: no format version byte")]
    Empty,
    #[error("format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_extend(value, vec![FORMAT_VERSION])?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion { found: version });
    }
    Ok(postcard::from_bytes(body)?)
}

/// Decodes a value that starts `bytes` (after the version byte) and returns the bytes after it:
/// reads the head of a long encoding (a snapshot file's meta) without the rest.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion { found: version });
    }
    Ok(postcard::take_from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let value = (7u64, "seven".to_string(), vec![1u8, 2, 3]);
        let bytes = encode(&value).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (u64, String, Vec<u8>) = decode(&bytes).unwrap();
        assert_eq!(back, value);

        let mut future = bytes.clone();
        future[0] = FORMAT_VERSION + 1;
        assert!(matches!(decode::<(u64, String, Vec<u8>)>(&future), Err(CodecError::UnsupportedVersion { .. })));
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
    }
}
