//! File names as the protocol carries them: one path component, checked.

use core::fmt;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest name accepted (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// Why a name was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// Empty names name nothing.
    #[error("empty file name")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`] bytes.
    #[error("file name longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    /// "." or "..": never a child, and ".." would leave the directory.
    #[error("'.' and '..' are not file names")]
    Dot,
    /// Contains '/' (a path, not a name) or NUL (ends a C string early).
    #[error("file name contains '/' or NUL")]
    BadByte,
}

impl NameError {
    /// The errno a file system returns for this name.
    pub fn errno(self) -> super::Errno {
        match self {
            NameError::TooLong => super::Errno::NameTooLong,
            NameError::Empty | NameError::Dot | NameError::BadByte => super::Errno::Inval,
        }
    }
}

/// One path component: non-empty, at most 255 bytes, no '/', no NUL, not
/// "." or "..". Bytes, not UTF-8: POSIX names are bytes.
///
/// A `Name` can only be made through [`Name::new`] (also when decoded from
/// the wire), so a value of this type is always safe to join to a
/// directory: it can never climb out of it or be an absolute path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Name(Vec<u8>);

impl Name {
    /// Checks and wraps a name.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, NameError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(NameError::Empty);
        }
        if bytes.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if bytes == b"." || bytes == b".." {
            return Err(NameError::Dot);
        }
        if bytes.iter().any(|&b| b == b'/' || b == 0) {
            return Err(NameError::BadByte);
        }
        Ok(Name(bytes))
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <Vec<u8>>::deserialize(d)?;
        Name::new(bytes).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Name {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = u.int_in_range(1..=12)?;
        let bytes: Vec<u8> = (0..len)
            .map(|_| Ok(b"abcxyz._-"[u.choose_index(9)?]))
            .collect::<arbitrary::Result<_>>()?;
        Name::new(bytes).or_else(|_| Ok(Name(b"x".to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_safe_components_are_names() {
        assert!(Name::new("notes.txt").is_ok());
        assert!(Name::new("...").is_ok(), "three dots is an ordinary name");
        assert!(
            Name::new(vec![0xff, 0xfe]).is_ok(),
            "non-UTF-8 bytes are fine"
        );
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("."), Err(NameError::Dot));
        assert_eq!(Name::new(".."), Err(NameError::Dot));
        assert_eq!(Name::new("a/b"), Err(NameError::BadByte));
        assert_eq!(Name::new("/etc"), Err(NameError::BadByte));
        assert_eq!(Name::new("a\0b"), Err(NameError::BadByte));
        assert_eq!(Name::new(vec![b'a'; 256]), Err(NameError::TooLong));
        assert!(Name::new(vec![b'a'; 255]).is_ok());
        assert_eq!(NameError::TooLong.errno(), super::super::Errno::NameTooLong);
    }

    #[test]
    fn decoding_checks_names_too() {
        let cfg = bincode::config::standard();
        for raw in [&b".."[..], b"a/b", b""] {
            let wire = bincode::serde::encode_to_vec(raw.to_vec(), cfg).expect("encode");
            assert!(bincode::serde::decode_from_slice::<Name, _>(&wire, cfg).is_err());
        }
        let wire = bincode::serde::encode_to_vec(b"ok".to_vec(), cfg).expect("encode");
        let (name, _) = bincode::serde::decode_from_slice::<Name, _>(&wire, cfg).expect("decode");
        assert_eq!(name.as_bytes(), b"ok");
    }
}
