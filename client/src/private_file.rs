//! Files that hold secrets (a token, a resume secret): written whole, readable by the user alone.

use std::io;
use std::path::Path;

/// Writes `contents` to `path` through a temporary file in the same directory, renamed into
/// place, with mode 0600 on Unix; the directory is created (mode 0700) when missing.
///
/// # Errors
/// The I/O error when the directory or the file cannot be written.
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    let file_name = path.file_name().ok_or_else(|| io::Error::other("not a file path"))?;
    let temporary = dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    io::Write::write_all(&mut file, contents)?;
    file.sync_all()?;
    std::fs::rename(temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn written_for_the_user_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/secret.toml");
        write(&path, b"token = \"x\"").expect("written");
        write(&path, b"token = \"y\"").expect("replaced");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "token = \"y\"");
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
