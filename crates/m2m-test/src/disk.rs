//! A small disk for full-disk tests: a tmpfs mounted by the test itself (which must run as root).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;

use crate::TempDir;

/// A tmpfs mounted for one test, unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: PathBuf,
    _dir: Option<TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=`, e.g. `8m`) on a new temporary directory.
    ///
    /// # Panics
    /// When `mount` fails (not root, no tmpfs).
    pub fn mount(size: &str) -> Self {
        let dir = TempDir::new("tmpfs");
        let mut fs = Self::mount_at(dir.path(), size);
        fs._dir = Some(dir);
        fs
    }

    /// Mounts a tmpfs of `size` on the existing directory `path`.
    ///
    /// # Panics
    /// When `mount` fails (not root, no tmpfs).
    pub fn mount_at(path: &Path, size: &str) -> Self {
        let path = path.to_owned();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (run the tests as root): mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { path, _dir: None }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(&self.path).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            // Lazily, if something still holds a file open.
            let _ = Command::new("umount").arg("-l").arg(&self.path).output();
        }
    }
}

/// Writes zeros into a new file at `path` until the disk is full.
///
/// # Panics
/// On any error but "no space left on device".
pub fn fill_disk(path: &Path) {
    let mut f = std::fs::File::create(path).expect("create the filler file");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = f.sync_all();
}

/// `len` bytes that do not compress (xorshift from `seed`), so that what is written really grows.
pub fn noise(seed: u64, len: usize) -> Bytes {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<_>>()
        .into()
}
