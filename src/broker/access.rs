//! Access control: who may connect, and publish, subscribe, serve, request or own state on which
//! topics. An [`AccessList`] is read from a TOML file of `[[allow]]` rules:
//!
//! ```toml
//! [[allow]]
//! user = "alice"            # or uid = 1000, group = "sensors", gid = 100; all keys given must match
//! publish = ["sensors/**"]
//! subscribe = ["**"]
//! serve = ["calc/*"]
//! request = ["calc/**"]
//! state = ["config/**"]     # own state collections; watching them is `subscribe`
//! ```
//!
//! A client is matched by the uid and groups of its process (`SO_PEERCRED`, and the
//! supplementary groups the kernel lists for it at connect time). The broker's own uid may do
//! everything; anyone no rule matches cannot connect. A rule without user or group keys matches
//! everyone. An operation on a topic (or a pattern: a subscription, a wildcard publish) is allowed
//! when a matching rule lists a pattern that [`covers`] it.

use std::path::Path;

use serde::Deserialize;

use crate::topic::{Topic, covers};

/// An operation the access list rules on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Publishing on a topic.
    Publish,
    /// Subscribing to a pattern, or watching state collections.
    Subscribe,
    /// Serving a topic's requests.
    Serve,
    /// Sending requests to a topic.
    Request,
    /// Owning (publishing) a state collection.
    State,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::Publish => "publish on",
            Operation::Subscribe => "subscribe to",
            Operation::Serve => "serve",
            Operation::Request => "send requests to",
            Operation::State => "own the state collection",
        })
    }
}

/// Who a client is, as the access list sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id and supplementary groups.
    pub gids: Vec<u32>,
}

/// Why an access list file was not loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessListError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {detail}")]
    Syntax {
        /// The file.
        path: String,
        /// What is wrong, and where.
        detail: String,
    },
    /// A rule is invalid: an unknown user or group, a bad pattern.
    #[error("{path}: rule {rule}: {detail}")]
    Rule {
        /// The file.
        path: String,
        /// The rule's number, from 1.
        rule: usize,
        /// What is wrong.
        detail: String,
    },
}

/// One `[[allow]]` table, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleText {
    user: Option<String>,
    uid: Option<u32>,
    group: Option<String>,
    gid: Option<u32>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    serve: Vec<String>,
    #[serde(default)]
    request: Vec<String>,
    #[serde(default)]
    state: Vec<String>,
}

/// The file, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    #[serde(default)]
    allow: Vec<RuleText>,
}

/// One rule, with names resolved to ids and patterns parsed.
#[derive(Debug)]
struct Rule {
    uid: Option<u32>,
    gid: Option<u32>,
    publish: Vec<Topic>,
    subscribe: Vec<Topic>,
    serve: Vec<Topic>,
    request: Vec<Topic>,
    state: Vec<Topic>,
}

impl Rule {
    fn matches(&self, who: &Identity) -> bool {
        self.uid.is_none_or(|uid| uid == who.uid)
            && self.gid.is_none_or(|gid| who.gids.contains(&gid))
    }

    fn patterns(&self, op: Operation) -> &[Topic] {
        match op {
            Operation::Publish => &self.publish,
            Operation::Subscribe => &self.subscribe,
            Operation::Serve => &self.serve,
            Operation::Request => &self.request,
            Operation::State => &self.state,
        }
    }
}

/// The rules of an access list file; see the [module](self) for the format.
#[derive(Debug)]
pub struct AccessList {
    rules: Vec<Rule>,
    /// The broker's uid, which may do everything.
    owner: u32,
}

impl AccessList {
    /// Reads and checks the file at `path`. User and group names are resolved now.
    pub fn load(path: &Path) -> Result<AccessList, AccessListError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessListError::Read {
            path: path.display().to_string(),
            source,
        })?;
        AccessList::parse(&text, &path.display().to_string())
    }

    /// Parses the rules in `text`; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<AccessList, AccessListError> {
        let file: FileText = toml::from_str(text).map_err(|e| AccessListError::Syntax {
            path: path.to_string(),
            detail: e.to_string().trim_end().replace('\n', " "),
        })?;
        let rules = file
            .allow
            .into_iter()
            .enumerate()
            .map(|(i, rule)| {
                resolve(rule).map_err(|detail| AccessListError::Rule {
                    path: path.to_string(),
                    rule: i + 1,
                    detail,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(AccessList {
            rules,
            owner: nix::unistd::geteuid().as_raw(),
        })
    }

    /// Whether `who` may connect: the broker's uid, or someone a rule matches.
    pub fn admits(&self, who: &Identity) -> bool {
        who.uid == self.owner || self.rules.iter().any(|r| r.matches(who))
    }

    /// Whether `who` may do `op` on `topic` (a topic or a pattern).
    pub fn allows(&self, who: &Identity, op: Operation, topic: &Topic) -> bool {
        who.uid == self.owner
            || self
                .rules
                .iter()
                .filter(|r| r.matches(who))
                .any(|r| r.patterns(op).iter().any(|p| covers(p, topic)))
    }
}

/// A rule with its user and group resolved and its patterns parsed.
fn resolve(rule: RuleText) -> Result<Rule, String> {
    let uid = match (rule.user, rule.uid) {
        (Some(_), Some(_)) => return Err("give `user` or `uid`, not both".into()),
        (Some(name), None) => Some(
            nix::unistd::User::from_name(&name)
                .map_err(|e| format!("cannot look user {name:?} up: {e}"))?
                .ok_or_else(|| format!("no user {name:?}"))?
                .uid
                .as_raw(),
        ),
        (None, uid) => uid,
    };
    let gid = match (rule.group, rule.gid) {
        (Some(_), Some(_)) => return Err("give `group` or `gid`, not both".into()),
        (Some(name), None) => Some(
            nix::unistd::Group::from_name(&name)
                .map_err(|e| format!("cannot look group {name:?} up: {e}"))?
                .ok_or_else(|| format!("no group {name:?}"))?
                .gid
                .as_raw(),
        ),
        (None, gid) => gid,
    };
    let patterns = |list: Vec<String>, key: &str| {
        list.iter()
            .map(|p| Topic::new(p).map_err(|e| format!("{key}: {e}")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Rule {
        uid,
        gid,
        publish: patterns(rule.publish, "publish")?,
        subscribe: patterns(rule.subscribe, "subscribe")?,
        serve: patterns(rule.serve, "serve")?,
        request: patterns(rule.request, "request")?,
        state: patterns(rule.state, "state")?,
    })
}

/// The supplementary groups of process `pid`, as `/proc` lists them (empty if it cannot be
/// read: the process may be gone already).
pub(crate) fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(uid: u32, gids: &[u32]) -> Identity {
        Identity {
            uid,
            gids: gids.to_vec(),
        }
    }

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    const FILE: &str = r#"
        [[allow]]
        uid = 5001
        publish = ["sensors/**"]
        subscribe = ["**"]

        [[allow]]
        gid = 777
        request = ["calc/*"]

        [[allow]]
        uid = 5002
        gid = 778
        serve = ["calc/add"]
        state = ["config/**"]
    "#;

    #[test]
    fn rules_grant_what_they_list_to_whom_they_match() {
        let acl = AccessList::parse(FILE, "test.toml").unwrap();
        let alice = who(5001, &[5001]);
        assert!(acl.admits(&alice));
        assert!(acl.allows(&alice, Operation::Publish, &t("sensors/a/b")));
        assert!(acl.allows(&alice, Operation::Publish, &t("sensors/*")));
        assert!(!acl.allows(&alice, Operation::Publish, &t("actuators/a")));
        assert!(acl.allows(&alice, Operation::Subscribe, &t("**")));
        assert!(!acl.allows(&alice, Operation::Serve, &t("calc/add")));
        // Groups: any of the client's.
        let member = who(6000, &[6000, 777]);
        assert!(acl.admits(&member));
        assert!(acl.allows(&member, Operation::Request, &t("calc/mul")));
        assert!(!acl.allows(&member, Operation::Request, &t("calc/a/b")));
        // Both keys of a rule must match.
        assert!(!acl.admits(&who(5002, &[5002])));
        let both = who(5002, &[778]);
        assert!(acl.allows(&both, Operation::Serve, &t("calc/add")));
        assert!(acl.allows(&both, Operation::State, &t("config/x")));
        assert!(!acl.admits(&who(6001, &[6001])));
        // The broker's own uid may do anything.
        let me = who(nix::unistd::geteuid().as_raw(), &[]);
        assert!(acl.admits(&me) && acl.allows(&me, Operation::Serve, &t("x")));
    }

    #[test]
    fn bad_files_are_refused_with_what_and_where() {
        let e = |text: &str| AccessList::parse(text, "f.toml").unwrap_err().to_string();
        assert!(
            e("[[allow]]\nusr = 'x'").contains("usr"),
            "{}",
            e("[[allow]]\nusr = 'x'")
        );
        assert!(e("[[allow]]\nuid = 1\npublish = ['a//b']").contains("rule 1: publish"));
        assert!(e("[[allow]]\nuser = 'no-such-user-here'").contains("no user"));
        assert!(e("[[allow]]\nuser = 'root'\nuid = 0").contains("not both"));
        assert!(e("[[allow").starts_with("f.toml"));
    }
}
