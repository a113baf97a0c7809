//! The cluster key file: 64 hexadecimal digits (surrounding whitespace
//! allowed), the form `shoal keygen --out FILE` writes.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use shoal_core::wire::ClusterKey;

/// Longest key file read; a real one is 64 digits and a newline.
const MAX_KEY_FILE: u64 = 4096;

/// Why the key file gave no key.
#[derive(Debug)]
pub enum KeyError {
    /// No file at that path: create one, or fix `--key`.
    Missing(PathBuf),
    /// The file exists but could not be read (permissions, a directory...).
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file does not hold 64 hex digits.
    Malformed(PathBuf),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Missing(p) => write!(
                f,
                "key file {} does not exist: create one with 'shoal keygen --out {}'",
                p.display(),
                p.display()
            ),
            KeyError::Unreadable { path, source } => write!(
                f,
                "cannot read key file {}: {}",
                path.display(),
                crate::io_reason(source)
            ),
            KeyError::Malformed(p) => write!(
                f,
                "key file {} does not hold a cluster key: expected 64 hex digits",
                p.display()
            ),
        }
    }
}

/// The message carries the cause, so there is no separate source.
impl std::error::Error for KeyError {}

/// Reads the cluster key from `path`.
pub fn read(path: &Path) -> Result<ClusterKey, KeyError> {
    let unreadable = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => KeyError::Missing(path.to_owned()),
        _ => KeyError::Unreadable {
            path: path.to_owned(),
            source,
        },
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(ClusterKey::from_hex)
        .ok_or_else(|| KeyError::Malformed(path.to_owned()))
}

/// Whether users other than the owner may read the key file (they should
/// not: anyone holding the key can join the cluster and read its traffic).
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hex_and_says_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("key");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(read(&good).unwrap().0, [0xab; 32]);

        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not a key").unwrap();
        assert!(matches!(read(&bad), Err(KeyError::Malformed(_))));
        std::fs::write(&bad, [0xff; 64]).unwrap();
        assert!(matches!(read(&bad), Err(KeyError::Malformed(_))));

        let missing = dir.path().join("missing");
        let e = read(&missing).unwrap_err();
        assert!(e.to_string().contains("shoal keygen --out"), "{e}");

        let e = read(dir.path()).unwrap_err();
        assert!(
            matches!(e, KeyError::Unreadable { .. }),
            "a directory is not a key: {e}"
        );
    }
}
