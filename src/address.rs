//! Bus addresses: a name, a socket path, or a `tcp://` / `tls://` URL.
//!
//! A name maps to `$XDG_RUNTIME_DIR/shmbus/NAME.sock`, or `/tmp/shmbus-UID/NAME.sock` without
//! `XDG_RUNTIME_DIR`. `SHMBUS_BUS` sets the default address, else the name `default`.

use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable holding the default bus address.
pub const BUS_ENV: &str = "SHMBUS_BUS";

/// The bus name used when nothing else is given.
pub const DEFAULT_NAME: &str = "default";

/// Where a bus is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusAddress {
    /// A broker on this host, reached through its control socket.
    Local(PathBuf),
    /// A broker on another host, over TCP (`host:port`).
    Tcp(String),
    /// A broker on another host, over TLS (`host:port`).
    Tls(String),
}

/// Why an address string was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddressError {
    /// An empty address.
    #[error("empty bus address")]
    Empty,
    /// A name with characters outside `[A-Za-z0-9._-]`, or too long.
    #[error(
        "invalid bus name {0:?}: use 1 to 100 of A-Z a-z 0-9 . _ -, or a socket path containing '/'"
    )]
    BadName(String),
    /// A URL whose scheme is not `tcp` or `tls`, or without `host:port`.
    #[error("invalid bus URL {0:?}: expected tcp://HOST:PORT or tls://HOST:PORT")]
    BadUrl(String),
}

impl BusAddress {
    /// Parses an address as the CLI and `SHMBUS_BUS` accept it.
    pub fn parse(s: &str) -> Result<BusAddress, AddressError> {
        BusAddress::parse_with(s, false)
    }

    /// Parses an address to listen at: as [`BusAddress::parse`], and port 0 (the system
    /// chooses) is allowed.
    pub fn parse_listen(s: &str) -> Result<BusAddress, AddressError> {
        BusAddress::parse_with(s, true)
    }

    fn parse_with(s: &str, any_port: bool) -> Result<BusAddress, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            let valid = rest.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0 || any_port)
            });
            return match (scheme, valid) {
                ("tcp", true) => Ok(BusAddress::Tcp(rest.to_string())),
                ("tls", true) => Ok(BusAddress::Tls(rest.to_string())),
                _ => Err(AddressError::BadUrl(s.to_string())),
            };
        }
        if s.contains('/') {
            return Ok(BusAddress::Local(PathBuf::from(s)));
        }
        let valid_name = s.len() <= 100
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && s != "."
            && s != "..";
        if !valid_name {
            return Err(AddressError::BadName(s.to_string()));
        }
        Ok(BusAddress::Local(name_to_path(s)))
    }

    /// The address from `SHMBUS_BUS`, or the default name.
    pub fn from_env() -> Result<BusAddress, AddressError> {
        match std::env::var(BUS_ENV) {
            Ok(s) if !s.is_empty() => BusAddress::parse(&s),
            _ => BusAddress::parse(DEFAULT_NAME),
        }
    }

    /// The control socket path, for local buses.
    pub fn socket_path(&self) -> Option<&Path> {
        match self {
            BusAddress::Local(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for BusAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusAddress::Local(p) => write!(f, "{}", p.display()),
            BusAddress::Tcp(a) => write!(f, "tcp://{a}"),
            BusAddress::Tls(a) => write!(f, "tls://{a}"),
        }
    }
}

fn name_to_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(runtime) if !runtime.is_empty() => PathBuf::from(runtime).join("shmbus"),
        _ => PathBuf::from(format!("/tmp/shmbus-{}", nix::unistd::getuid())),
    };
    dir.join(format!("{name}.sock"))
}

/// Makes sure the directory holding `socket` exists and is private: created with mode 0700 if
/// missing; if it exists, it must belong to us and not be open to others — otherwise another user
/// could have planted it (or a socket in it).
pub fn ensure_private_dir(socket: &Path) -> io::Result<()> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("create {}: {e}", dir.display()),
            ));
        }
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let ours = meta.uid() == nix::unistd::getuid().as_raw();
    // Only directories we created for buses are required to be private; a socket path the user
    // chose in a shared directory (say /run/app/bus.sock) is theirs to secure.
    let ours_to_check = dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("shmbus"));
    let mode = meta.permissions().mode();
    // 0711 is what a broker with an access list leaves (others may reach the socket, not list or
    // change the directory): made private again here.
    if ours_to_check && meta.is_dir() && ours && mode & 0o7777 == 0o711 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        return Ok(());
    }
    if ours_to_check && (!meta.is_dir() || !ours || mode & 0o077 != 0) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a directory owned by you with mode 0700 (found mode {:o}, owner {})",
                dir.display(),
                meta.permissions().mode() & 0o7777,
                meta.uid()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_urls() {
        let name = BusAddress::parse("robots").unwrap();
        assert!(
            name.socket_path().unwrap().ends_with("shmbus/robots.sock") || {
                let p = name.socket_path().unwrap().to_string_lossy().into_owned();
                p.starts_with("/tmp/shmbus-") && p.ends_with("/robots.sock")
            }
        );
        assert_eq!(
            BusAddress::parse("./x.sock").unwrap(),
            BusAddress::Local("./x.sock".into())
        );
        assert_eq!(
            BusAddress::parse("tcp://h:1").unwrap(),
            BusAddress::Tcp("h:1".into())
        );
        assert_eq!(
            BusAddress::parse("tls://[::1]:443").unwrap(),
            BusAddress::Tls("[::1]:443".into())
        );
        for bad in [
            "",
            "a b",
            "..",
            "x:y",
            "http://h:1",
            "tcp://h",
            "tcp://:1",
            "tcp://h:0",
            "tcp://h:99999",
        ] {
            assert!(BusAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            BusAddress::parse("tcp://h:1").unwrap().to_string(),
            "tcp://h:1"
        );
    }

    #[test]
    fn private_dirs_are_created_0700_and_open_ones_refused() {
        let base = std::env::temp_dir().join(format!("shmbus-addr-test-{}", std::process::id()));
        let sock = base.join("shmbus-x").join("a.sock");
        std::fs::create_dir_all(&base).unwrap();
        ensure_private_dir(&sock).unwrap();
        let mode = std::fs::metadata(sock.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(
            sock.parent().unwrap(),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        assert_eq!(
            ensure_private_dir(&sock).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
