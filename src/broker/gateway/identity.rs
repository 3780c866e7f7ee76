//! Who a remote client is, for the access list: the user its TLS client certificate names.
//!
//! The certificate was verified against the gateway's client CA during the handshake; its
//! subject's common name (CN) is taken as the name of a user of this host, and the client is
//! checked as that user — its uid, primary group and supplementary groups — exactly as a local
//! process of that user would be. A certificate without a CN, or whose CN is no user here, is
//! refused.

use std::ffi::CString;

use crate::broker::access::Identity;

/// A remote client's user, as its certificate names it.
#[derive(Clone, Debug)]
pub(super) struct RemoteUser {
    /// The user's name (the certificate's CN).
    pub(super) name: String,
    /// The uid and groups checked.
    pub(super) identity: Identity,
}

impl std::fmt::Display for RemoteUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "user {} (uid {})", self.name, self.identity.uid)
    }
}

/// The user the certificate `der` names in its subject's common name.
pub(super) fn user_of_certificate(der: &[u8]) -> Result<RemoteUser, String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the client certificate's subject has no common name (CN) naming a user")?
        .to_string();
    let user = nix::unistd::User::from_name(&name)
        .map_err(|e| format!("cannot look user {name:?} up: {e}"))?
        .ok_or_else(|| {
            format!("the client certificate names user {name:?}, who is not a user of this host")
        })?;
    let c_name =
        CString::new(name.as_str()).map_err(|_| format!("user name {name:?} holds a NUL byte"))?;
    let groups = nix::unistd::getgrouplist(&c_name, user.gid)
        .map_err(|e| format!("cannot list the groups of user {name:?}: {e}"))?;
    Ok(RemoteUser {
        name,
        identity: Identity {
            uid: user.uid.as_raw(),
            gids: groups.into_iter().map(|g| g.as_raw()).collect(),
        },
    })
}
