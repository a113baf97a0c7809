//! Cluster key files: 64 hex digits and a newline, readable by the owner only.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use shoal_core::wire::ClusterKey;

use crate::client::random_u64;

/// A new key from the operating system's random source.
pub fn generate() -> Result<ClusterKey> {
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        chunk.copy_from_slice(&random_u64()?.to_le_bytes());
    }
    Ok(ClusterKey(key))
}

/// Writes `key` to `path` with mode 0600. Without `force` an existing file
/// is left alone and reported; with it the file is replaced atomically.
pub fn write(path: &Path, key: &ClusterKey, force: bool) -> Result<()> {
    let mut text = key.to_hex().to_vec();
    text.push(b'\n');
    if !force {
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => bail!(
                "{} already exists; pass --force to replace it (nodes using the old key \
                 will no longer accept this one)",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        };
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        return Ok(());
    }
    // Write beside the target, then rename over it: readers never see a
    // half-written key, and the new file has mode 0600 whatever the old had.
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    let result = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Reads the key in `path`, with advice when it is missing or malformed.
pub fn read(path: &Path) -> Result<ClusterKey> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "key file {} does not exist; create one with `shoal keygen --out {}` or point \
             --key (or SHOAL_KEY) at the cluster's key",
            path.display(),
            path.display()
        ),
        Err(e) => bail!("cannot read key file {}: {e}", path.display()),
    };
    ClusterKey::from_hex(&text).with_context(|| {
        format!(
            "key file {} does not hold a cluster key (64 hex digits)",
            path.display()
        )
    })
}
