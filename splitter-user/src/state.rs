//! The agent's state on disk: `state_dir` (mode 0700) and its files (0600,
//! written atomically), among them `runtime.json`, the runtime changes,
//! written before a change goes live and read at start.

use std::path::{Path, PathBuf};

use splitter_model::runtime::Runtime;
use thiserror::Error;

/// File in `state_dir` that keeps the runtime changes across restarts.
pub const STATE_FILE: &str = "runtime.json";

#[derive(Debug, Error)]
pub enum StateError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a splitter state file ({source}); move it away to start from the config file's weights")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Loading and saving a `Runtime` in `state_dir` (`Runtime::load(dir)`,
/// `runtime.save(dir)` with this trait in scope).
pub trait RuntimeFile: Sized {
    /// The runtime changes saved in `state_dir` (none when there is no file).
    fn load(state_dir: &Path) -> Result<Self, StateError>;
    /// Saves to `state_dir` atomically (write a temporary file, then rename).
    fn save(&self, state_dir: &Path) -> Result<(), StateError>;
}

impl RuntimeFile for Runtime {
    /// The runtime changes saved in `state_dir` (none when there is no file).
    fn load(state_dir: &Path) -> Result<Self, StateError> {
        let path = state_dir.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    /// Saves to `state_dir` atomically (write a temporary file, then rename).
    fn save(&self, state_dir: &Path) -> Result<(), StateError> {
        let path = state_dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self).expect("runtime state serializes");
        write_private(&path, text.as_bytes()).map_err(|source| StateError::Write { path, source })
    }
}

/// Writes `bytes` to `path` atomically (a temporary file beside it, then a
/// rename), readable by the owner only: weights and rollouts are the
/// operator's business.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    // An existing temporary file keeps its mode: make sure.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Creates `state_dir` (and its parents) and makes it the owner's only.
pub fn create_state_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use splitter_model::config::Config;

    use super::*;
    use crate::config_file::ConfigFile as _;

    fn file() -> Config {
        Config::from_yaml(
            "interfaces: {clients: [eth0]}\nservices:\n  shop: {listen: 203.0.113.10:80, protocol: tcp, versions: {blue: [198.51.100.10:80], green: [198.51.100.20:80]}, weights: {blue: 95, green: 5}}\n",
        )
        .unwrap()
    }

    #[test]
    fn state_survives_a_save_and_load_and_a_bad_file_is_named() {
        let f = file();
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Runtime::load(dir.path()).unwrap(), Runtime::default(), "no file: no changes");
        let mut r = Runtime::default();
        r.weight(&f, "shop", &[("green".into(), 30)]).unwrap();
        r.flip(&f, "shop", "green").unwrap();
        r.save(dir.path()).unwrap();
        let mut back = Runtime::load(dir.path()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.rollback(&f, "shop").unwrap()["green"], 30, "history survives too");
        std::fs::write(dir.path().join(STATE_FILE), "{ not json").unwrap();
        let err = Runtime::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("runtime.json is not a splitter state file"), "{err}");
    }

    #[test]
    fn the_state_dir_and_its_files_are_the_owners_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        create_state_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        // Even over a file that was world-readable before.
        std::fs::write(dir.join(STATE_FILE), "{}").unwrap();
        std::fs::set_permissions(dir.join(STATE_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        Runtime::default().save(&dir).unwrap();
        assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
        assert_eq!(Runtime::load(&dir).unwrap(), Runtime::default());
    }
}
