//! node-exporter textfile output: `drydock.prom`, replaced atomically so the
//! collector never reads half a file.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The file node-exporter's textfile collector picks up.
const TEXTFILE_NAME: &str = "drydock.prom";

#[derive(Debug, thiserror::Error)]
#[error("writing metrics textfile {}: {source}", path.display())]
pub(crate) struct TextfileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Writes `contents` to `dir/drydock.prom` via a temp file (not ending in
/// `.prom`, so the collector ignores it), fsync and rename.
pub(crate) fn write(dir: &Path, contents: &str) -> Result<PathBuf, TextfileError> {
    let target = dir.join(TEXTFILE_NAME);
    let temp = dir.join(format!(".{TEXTFILE_NAME}.{}.tmp", std::process::id()));
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TextfileError { path, source }
    };
    let result = (|| {
        let mut f = std::fs::File::create(&temp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&temp, &target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(err(&target))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a 1\n").unwrap();
        let path = write(dir.path(), "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(TEXTFILE_NAME)]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = write(&dir.path().join("nope"), "a 1\n").unwrap_err();
        assert!(e.to_string().contains("nope/drydock.prom"), "{e}");
    }
}
