//! Persistent collections on disk: one directory per collection under the state directory, one
//! file per entry and one for the restart counter.
//!
//! Every write goes to a temporary file in the collection's directory, which is fsynced, renamed
//! over the entry's file, and then the directory is fsynced: a crash at any point leaves the
//! entry's old file or its new one, never a torn one, and temporaries left by a crash are removed
//! when the store opens. A removal unlinks the file and fsyncs the directory.
//!
//! Names: a collection's directory is its topic with `/` written as `.` (no topic has a `.`); an
//! entry's file is `k` and its key percent-encoded, or — for keys whose encoding is too long for
//! a file name — `h` and a hash of the key (with a suffix if two keys met). Each entry's file
//! holds its key, so the names only address files: the magic `shmbusK1`, the key's length
//! (`u16`), the value's length (`u32`), two zero bytes, the key, the value. The counter's file,
//! `restarted`, holds `shmbusR1` and the counter (`u64`), little-endian.
//!
//! For tests of crash safety, `SHMBUS_STATE_FAILPOINT=STEP:N` makes the process abort at step
//! `STEP` (`written`, `synced` or `renamed`) of its `N`th write.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::protocol::state::check_key;
use crate::topic::Topic;

const ENTRY_MAGIC: &[u8; 8] = b"shmbusK1";
const COUNTER_MAGIC: &[u8; 8] = b"shmbusR1";
const COUNTER_FILE: &str = "restarted";
const TMP_PREFIX: &str = ".tmp-";
/// Longest file name written (NAME_MAX is 255; the temporary's prefix comes on top).
const MAX_NAME: usize = 240;

/// A collection as loaded from disk.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub entries: HashMap<String, Vec<u8>>,
    pub restarted: u64,
}

/// One collection's directory and the file name of each of its keys.
#[derive(Debug)]
struct Dir {
    path: PathBuf,
    /// Key -> file name, as found on disk or given since.
    names: HashMap<String, String>,
}

/// The state directory.
#[derive(Debug)]
pub(super) struct Store {
    root: PathBuf,
    dirs: HashMap<String, Dir>,
    failpoint: Option<(String, u64)>,
    writes: u64,
}

impl Store {
    /// Opens (creating it private if missing) the state directory at `root` and loads every
    /// collection in it, removing what crashed writes left.
    pub(super) fn open(root: &Path) -> io::Result<(Store, Vec<(Topic, Loaded)>)> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
        let failpoint = std::env::var("SHMBUS_STATE_FAILPOINT").ok().and_then(|v| {
            let (step, n) = v.split_once(':')?;
            Some((step.to_string(), n.parse().ok()?))
        });
        let mut store = Store {
            root: root.to_path_buf(),
            dirs: HashMap::new(),
            failpoint,
            writes: 0,
        };
        let mut loaded = Vec::new();
        for dirent in fs::read_dir(root)? {
            let dirent = dirent?;
            let name = dirent.file_name().to_string_lossy().into_owned();
            let topic = match Topic::new(&name.replace('.', "/")) {
                Ok(t) if !t.is_wildcard() && dirent.file_type()?.is_dir() => t,
                _ => {
                    warn!(path = %dirent.path().display(), "not a collection; left alone");
                    continue;
                }
            };
            let (dir, collection) = load_dir(dirent.path())?;
            info!(topic = %topic, entries = collection.entries.len(), "persistent collection loaded");
            store.dirs.insert(topic.as_str().to_string(), dir);
            loaded.push((topic, collection));
        }
        Ok((store, loaded))
    }

    /// Stores `value` under `key` in collection `topic`.
    pub(super) fn put(&mut self, topic: &str, key: &str, value: &[u8]) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(16 + key.len() + value.len());
        bytes.extend_from_slice(ENTRY_MAGIC);
        bytes.extend_from_slice(&(key.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(value);
        let name = self.dir(topic)?.name_for(key);
        self.replace(topic, &name, &bytes)
    }

    /// Removes `key` from collection `topic`.
    pub(super) fn remove(&mut self, topic: &str, key: &str) -> io::Result<()> {
        let dir = self.dir(topic)?;
        let Some(name) = dir.names.remove(key) else {
            return Ok(());
        };
        match fs::remove_file(dir.path.join(&name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        sync_dir(&dir.path)
    }

    /// Stores collection `topic`'s restart counter.
    pub(super) fn set_restarted(&mut self, topic: &str, counter: u64) -> io::Result<()> {
        let mut bytes = COUNTER_MAGIC.to_vec();
        bytes.extend_from_slice(&counter.to_le_bytes());
        self.replace(topic, COUNTER_FILE, &bytes)
    }

    /// Deletes collection `topic` from disk (it is no longer persistent).
    pub(super) fn drop_collection(&mut self, topic: &str) -> io::Result<()> {
        let Some(dir) = self.dirs.remove(topic) else {
            return Ok(());
        };
        fs::remove_dir_all(&dir.path)?;
        sync_dir(&self.root)
    }

    /// Writes `bytes` as file `name` of collection `topic`: temporary, fsync, rename, fsync of
    /// the directory.
    fn replace(&mut self, topic: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.writes += 1;
        let path = self.dir(topic)?.path.clone();
        let tmp = path.join(format!("{TMP_PREFIX}{name}"));
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        self.failpoint("written");
        file.sync_all()?;
        self.failpoint("synced");
        fs::rename(&tmp, path.join(name))?;
        self.failpoint("renamed");
        sync_dir(&path)
    }

    /// Aborts the process here if the failpoint says so.
    fn failpoint(&self, step: &str) {
        if let Some((at, n)) = &self.failpoint {
            if at == step && *n == self.writes {
                eprintln!("shmbus: state failpoint {step}:{n} reached; aborting");
                std::process::abort();
            }
        }
    }

    /// Collection `topic`'s directory, created (and its parent fsynced) on first use.
    fn dir(&mut self, topic: &str) -> io::Result<&mut Dir> {
        if !self.dirs.contains_key(topic) {
            let path = self.root.join(topic.replace('/', "."));
            fs::create_dir_all(&path)?;
            sync_dir(&self.root)?;
            let dir = Dir {
                path,
                names: HashMap::new(),
            };
            self.dirs.insert(topic.to_string(), dir);
        }
        Ok(self.dirs.get_mut(topic).expect("inserted"))
    }
}

impl Dir {
    /// The file name of `key`: the one it has, or a new one no other key has.
    fn name_for(&mut self, key: &str) -> String {
        if let Some(name) = self.names.get(key) {
            return name.clone();
        }
        let encoded = encode(key);
        let base = if encoded.len() < MAX_NAME {
            format!("k{encoded}")
        } else {
            format!("h{:016x}", fnv1a(key.as_bytes()))
        };
        let mut name = base.clone();
        let mut n = 1;
        while self.names.values().any(|v| *v == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.names.insert(key.to_string(), name.clone());
        name
    }
}

/// `key` with every byte outside `[A-Za-z0-9_.-]` written `%XX`.
fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Loads one collection's directory: removes temporaries, reads the counter and every entry
/// (files that are not valid entries are reported and left alone).
fn load_dir(path: PathBuf) -> io::Result<(Dir, Loaded)> {
    let mut loaded = Loaded::default();
    let mut names = HashMap::new();
    let mut cleaned = false;
    for dirent in fs::read_dir(&path)? {
        let dirent = dirent?;
        let name = dirent.file_name().to_string_lossy().into_owned();
        let file = dirent.path();
        if name.starts_with(TMP_PREFIX) {
            info!(path = %file.display(), "removing what an interrupted write left");
            fs::remove_file(&file)?;
            cleaned = true;
            continue;
        }
        let bytes = fs::read(&file)?;
        if name == COUNTER_FILE {
            match bytes.split_first_chunk::<8>() {
                Some((magic, rest)) if magic == COUNTER_MAGIC && rest.len() == 8 => {
                    loaded.restarted = u64::from_le_bytes(rest.try_into().expect("8 bytes"));
                }
                _ => warn!(path = %file.display(), "not a restart counter; ignored"),
            }
            continue;
        }
        match parse_entry(&bytes) {
            Some((key, value)) if !names.contains_key(&key) => {
                names.insert(key.clone(), name);
                loaded.entries.insert(key, value.to_vec());
            }
            Some((key, _)) => {
                warn!(path = %file.display(), key, "a second file for this key; ignored")
            }
            None => warn!(path = %file.display(), "not a state entry; ignored"),
        }
    }
    if cleaned {
        sync_dir(&path)?;
    }
    Ok((Dir { path, names }, loaded))
}

/// An entry file's key and value, if it is one.
fn parse_entry(bytes: &[u8]) -> Option<(String, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<16>()?;
    if &head[..8] != ENTRY_MAGIC {
        return None;
    }
    let key_len = usize::from(u16::from_le_bytes([head[8], head[9]]));
    let value_len = u32::from_le_bytes(head[10..14].try_into().ok()?) as usize;
    if rest.len() != key_len.checked_add(value_len)? {
        return None;
    }
    let key = std::str::from_utf8(&rest[..key_len]).ok()?;
    check_key(key).ok()?;
    Some((key.to_string(), &rest[key_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopening_and_leftovers_go() {
        let root = tempfile::tempdir().unwrap();
        let long = "é".repeat(120);
        {
            let (mut store, loaded) = Store::open(root.path()).unwrap();
            assert!(loaded.is_empty());
            store.put("cfg/net", "eth0", b"up").unwrap();
            store.put("cfg/net", "a b%", b"x").unwrap();
            store.put("cfg/net", &long, b"long").unwrap();
            store.put("cfg/net", "gone", b"1").unwrap();
            store.remove("cfg/net", "gone").unwrap();
            store.set_restarted("cfg/net", 3).unwrap();
        }
        let dir = root.path().join("cfg.net");
        fs::write(dir.join(".tmp-keth0"), b"torn").unwrap();
        fs::write(dir.join("kjunk"), b"not an entry").unwrap();
        let (_, loaded) = Store::open(root.path()).unwrap();
        assert_eq!(loaded.len(), 1);
        let (topic, c) = &loaded[0];
        assert_eq!(topic.as_str(), "cfg/net");
        assert_eq!(c.restarted, 3);
        assert_eq!(c.entries.len(), 3);
        assert_eq!(c.entries["eth0"], b"up");
        assert_eq!(c.entries["a b%"], b"x");
        assert_eq!(c.entries[&long], b"long");
        assert!(!dir.join(".tmp-keth0").exists());
    }
}
