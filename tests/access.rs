//! The broker's access list (`--acl FILE`), against clients that really run as other users:
//! `nobody`, a test user this file creates (`shmbus-test`, in group `shmbus-testers`), and a
//! uid no rule names. Each operation is tried allowed and refused; SIGHUP re-reads the file (a
//! bad one leaves the rules in force); and a subscriber of another user cannot write message
//! data by any route. Switching users needs root: CI runs as root and sets
//! `SHMBUS_REQUIRE_ROOT=1`, so these tests fail there rather than skip.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nix::sys::signal::Signal;
use support::raw::RawClient;
use support::{Broker, Proc, shmbus};

const NOBODY: u32 = 65534;
/// A uid no rule names (and no account has).
const STRANGER: u32 = 43_210;

/// Whether this process may switch users; without root the tests skip, unless
/// `SHMBUS_REQUIRE_ROOT=1` makes that a failure.
fn can_switch_users() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("SHMBUS_REQUIRE_ROOT").is_none_or(|v| v != "1"),
        "SHMBUS_REQUIRE_ROOT=1 but the tests do not run as root"
    );
    eprintln!("skipped: switching users needs root");
    false
}

/// Someone to run a client as: uid, primary gid, supplementary groups.
#[derive(Clone, Copy)]
struct User {
    uid: u32,
    gid: u32,
    groups: &'static [u32],
}

/// The test user (created once, with its group, if missing).
fn test_user() -> User {
    static USER: OnceLock<User> = OnceLock::new();
    *USER.get_or_init(|| {
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run useradd/groupadd");
            // 9: the user or group exists already (another test run made it).
            assert!(
                out.status.success() || out.status.code() == Some(9),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("groupadd").args(["-f", "shmbus-testers"]));
        run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--groups",
            "shmbus-testers",
            "shmbus-test",
        ]));
        let user = nix::unistd::User::from_name("shmbus-test")
            .unwrap()
            .unwrap();
        let testers = nix::unistd::Group::from_name("shmbus-testers")
            .unwrap()
            .unwrap();
        User {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: Box::leak(Box::new([testers.gid.as_raw()])),
        }
    })
}

fn nobody() -> User {
    User {
        uid: NOBODY,
        gid: NOBODY,
        groups: &[],
    }
}

/// Makes `cmd` run as `user`.
fn as_user(mut cmd: Command, user: User) -> Command {
    let groups: Vec<libc::gid_t> = user.groups.to_vec();
    // SAFETY: the closure runs in the child between fork and exec and only makes system calls
    // (setgroups, setgid, setuid) on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(user.gid) != 0
                || libc::setuid(user.uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs `shmbus ARGS` as `user` to completion: (exit code, stdout, stderr).
fn run_as(user: User, broker: &Broker, args: &[&str]) -> (i32, String, String) {
    let mut p = Proc::spawn(as_user(shmbus(broker.bus(), args), user));
    let code = p.wait_code();
    (code, p.stdout.text(), p.stderr.text())
}

/// Starts `shmbus ARGS` as `user`.
fn spawn_as(user: User, broker: &Broker, args: &[&str]) -> Proc {
    Proc::spawn(as_user(shmbus(broker.bus(), args), user))
}

/// Starts `shmbus ARGS` as `user` and waits for `ready` on its stderr.
fn start_as(user: User, broker: &Broker, args: &[&str], ready: &str) -> Proc {
    let p = spawn_as(user, broker, args);
    p.stderr.wait_for(ready);
    p
}

/// Asserts a refusal: exit 6, and a line naming the operation, the topic and the uid.
fn refused(outcome: (i32, String, String), op: &str, topic: &str, uid: u32) {
    let (code, _, stderr) = outcome;
    assert_eq!(code, 6, "expected permission denied: {stderr}");
    let line = stderr.trim();
    assert!(
        line.contains(op) && line.contains(topic) && line.contains(&format!("uid {uid}")),
        "the refusal should name {op:?}, {topic:?} and uid {uid}: {line}"
    );
}

/// A broker with the access list `rules`, its socket reachable by the other users.
fn broker_with(rules: &str) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, rules).unwrap();
    let socket = dir.path().join("bus.sock");
    let proc = Broker::start_at(&socket, &["--acl", acl.to_str().unwrap()]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666, "the socket is reachable by everyone");
    Broker { proc, socket, dir }
}

fn acl_path(broker: &Broker) -> std::path::PathBuf {
    broker.dir.path().join("acl.toml")
}

fn rules(test_user: User) -> String {
    format!(
        r#"
[[allow]]
uid = {NOBODY}
publish = ["open/**"]
subscribe = ["open/**"]
request = ["calc/add"]

[[allow]]
uid = {uid}
serve = ["calc/*"]
state = ["config/**"]
subscribe = ["config/**"]

[[allow]]
gid = {testers}
publish = ["shared/*"]
"#,
        uid = test_user.uid,
        testers = test_user.groups[0]
    )
}

#[test]
fn each_operation_is_allowed_or_refused_as_the_rules_say() {
    if !can_switch_users() {
        return;
    }
    let tester = test_user();
    let broker = broker_with(&rules(tester));
    let me = nix::unistd::geteuid().as_raw();

    // Nobody: publish and subscribe under open/, and nothing else.
    let sub = start_as(
        nobody(),
        &broker,
        &["sub", "open/**", "--count", "1"],
        "subscribed",
    );
    assert_eq!(run_as(nobody(), &broker, &["pub", "open/a", "hello"]).0, 0);
    assert_eq!(sub.stdout.wait_for("open/a"), "open/a\thello");
    refused(
        run_as(nobody(), &broker, &["pub", "secret/a", "x"]),
        "publish on",
        "secret/a",
        NOBODY,
    );
    // A wildcard publish is covered by open/**; one on everything is not.
    assert_eq!(run_as(nobody(), &broker, &["pub", "open/*", "x"]).0, 0);
    refused(
        run_as(nobody(), &broker, &["pub", "**", "x"]),
        "publish on",
        "**",
        NOBODY,
    );
    refused(
        run_as(nobody(), &broker, &["sub", "**"]),
        "subscribe to",
        "**",
        NOBODY,
    );
    refused(
        run_as(nobody(), &broker, &["serve", "calc/add", "--echo"]),
        "serve",
        "calc/add",
        NOBODY,
    );
    refused(
        run_as(nobody(), &broker, &["state", "publish", "config/a"]),
        "own the state collection",
        "config/a",
        NOBODY,
    );
    refused(
        run_as(nobody(), &broker, &["state", "get", "config/a"]),
        "subscribe to",
        "config/a",
        NOBODY,
    );

    // The test user serves calc/*, which nobody may ask (calc/add only).
    let server = start_as(
        tester,
        &broker,
        &["serve", "calc/add", "--echo"],
        "serving calc/add",
    );
    let (code, stdout, stderr) = run_as(nobody(), &broker, &["req", "calc/add", "2+2"]);
    assert_eq!((code, stdout.trim()), (0, "2+2"), "{stderr}");
    refused(
        run_as(nobody(), &broker, &["req", "calc/mul", "2"]),
        "send requests to",
        "calc/mul",
        NOBODY,
    );
    refused(
        run_as(tester, &broker, &["req", "calc/add", "2"]),
        "send requests to",
        "calc/add",
        tester.uid,
    );
    // State: the test user owns config/*, and may watch it.
    let cmd = shmbus(broker.bus(), &["state", "publish", "config/a"]);
    let mut owner = Proc::start(as_user(cmd, tester), Stdio::piped());
    owner.stderr.wait_for("publishing config/a");
    owner.send("put mode fast\n");
    let watch = spawn_as(tester, &broker, &["state", "watch", "config/**"]);
    assert_eq!(watch.stdout.wait_for("mode"), "created config/a/mode fast");
    // Through its supplementary group, the test user publishes on shared/*; not by its uid.
    assert_eq!(run_as(tester, &broker, &["pub", "shared/x", "y"]).0, 0);
    refused(
        run_as(tester, &broker, &["pub", "open/a", "y"]),
        "publish on",
        "open/a",
        tester.uid,
    );

    // A uid no rule names cannot connect; the broker's own uid may do anything.
    let stranger = User {
        uid: STRANGER,
        gid: STRANGER,
        groups: &[],
    };
    let (code, _, stderr) = run_as(stranger, &broker, &["pub", "open/a", "x"]);
    assert_eq!(code, 6, "{stderr}");
    assert!(
        stderr.contains(&format!("uid {STRANGER} may not connect")),
        "{stderr}"
    );
    let (code, _, stderr) = support::run(broker.bus(), &["pub", "secret/a", "x"]);
    assert_eq!(code, 0, "the broker's uid {me}: {stderr}");
    for mut p in [server, owner, watch] {
        p.signal(Signal::SIGTERM);
        let _ = p.child.wait();
    }
}

#[test]
fn sighup_rereads_the_rules_and_a_bad_file_leaves_them_in_force() {
    if !can_switch_users() {
        return;
    }
    let broker = broker_with(&rules(test_user()));
    refused(
        run_as(nobody(), &broker, &["pub", "secret/a", "x"]),
        "publish on",
        "secret/a",
        NOBODY,
    );
    let granted = format!("[[allow]]\nuid = {NOBODY}\npublish = [\"secret/**\"]\n");
    std::fs::write(acl_path(&broker), granted).unwrap();
    broker.proc.signal(Signal::SIGHUP);
    broker.proc.stderr.wait_for("access list reloaded");
    assert_eq!(run_as(nobody(), &broker, &["pub", "secret/a", "x"]).0, 0);
    // The new rules replaced the old ones: open/ is no longer granted.
    refused(
        run_as(nobody(), &broker, &["pub", "open/a", "x"]),
        "publish on",
        "open/a",
        NOBODY,
    );

    std::fs::write(acl_path(&broker), "[[allow]\nuid = 'not a number'").unwrap();
    broker.proc.signal(Signal::SIGHUP);
    let line = broker.proc.stderr.wait_for("not reloaded");
    assert!(
        line.contains("acl.toml"),
        "the error names the file: {line}"
    );
    assert_eq!(run_as(nobody(), &broker, &["pub", "secret/a", "x"]).0, 0);
}

/// Run by [`a_subscriber_of_another_user_cannot_write_message_data`] as `nobody`: subscribes
/// with its own connection, then tries every way to write through the descriptors it got.
#[test]
#[ignore = "a helper the test below runs as another user"]
fn helper_subscriber_tries_to_write() {
    let Some(socket) = std::env::var_os("SHMBUS_ACL_HELPER_SOCKET") else {
        return;
    };
    let mut client = RawClient::connect(Path::new(&socket));
    let fds = client.subscribe("open/data");
    let data = &fds[0];
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", data.as_raw_fd())).unwrap();
    // SAFETY: plain system calls on a path and a descriptor this process owns.
    let step = unsafe { support::hostile::attempt_writable(path.as_ptr(), data.as_raw_fd()) };
    assert_eq!(step, 0, "step {step} got write access to message data");
    println!("no write access");
}

#[test]
fn a_subscriber_of_another_user_cannot_write_message_data() {
    if !can_switch_users() {
        return;
    }
    let broker = broker_with(&rules(test_user()));
    let bus = shmbus::Bus::connect(broker.bus()).unwrap();
    let mut publisher = bus.publisher("open/data").unwrap();
    publisher.publish(b"precious").unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap());
    helper
        .args([
            "--exact",
            "helper_subscriber_tries_to_write",
            "--ignored",
            "--nocapture",
        ])
        .env("SHMBUS_ACL_HELPER_SOCKET", &broker.socket);
    let out = as_user(helper, nobody()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("no write access"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
