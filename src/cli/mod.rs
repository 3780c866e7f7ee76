//! The `shmbus` command line: argument parsing, exit codes, and one module per command.

mod bench;
mod broker;
mod demo;
mod format;
mod publish;
mod request;
mod serve;
mod state;
mod subscribe;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use std::path::PathBuf;

use crate::address::BusAddress;
use crate::{AttachError, Bus, ConnectError, ControlError, TlsClientFiles};

/// Exit codes, as the contract fixes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// An error.
    Error = 1,
    /// Bad usage (clap also exits with 2).
    Usage = 2,
    /// The broker cannot be reached.
    Unreachable = 3,
    /// The timeout passed first.
    Timeout = 4,
    /// Nobody serves the topic (`req`).
    NoServer = 5,
    /// The broker's access list does not allow it.
    PermissionDenied = 6,
}

/// A failed command: its exit code and one line for stderr.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: Exit,
    /// What went wrong, naming the topic, address or value at fault.
    pub message: String,
}

impl Failure {
    pub(crate) fn new(code: Exit, message: impl std::fmt::Display) -> Failure {
        Failure {
            code,
            message: message.to_string(),
        }
    }

    pub(crate) fn error(message: impl std::fmt::Display) -> Failure {
        Failure::new(Exit::Error, message)
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Failure {
        let code = match e {
            ConnectError::Unreachable { .. } => Exit::Unreachable,
            ConnectError::Address(_) => Exit::Usage,
            ConnectError::PermissionDenied { .. } => Exit::PermissionDenied,
            _ => Exit::Error,
        };
        Failure::new(code, e)
    }
}

impl From<AttachError> for Failure {
    fn from(e: AttachError) -> Failure {
        let code = match e {
            AttachError::InvalidTopic(_) => Exit::Usage,
            AttachError::PermissionDenied { .. } => Exit::PermissionDenied,
            AttachError::Broker {
                source: ControlError::BrokerGone,
                ..
            } => Exit::Unreachable,
            _ => Exit::Error,
        };
        Failure::new(code, e)
    }
}

/// The end of `shmbus --help`: what every command shares.
const LONG_HELP: &str = "\
Topics:
  Fragments separated by '/', each of A-Z a-z 0-9 _ - or a wildcard: '*' is one fragment, '**'
  one or more. At most 255 bytes. Patterns and published topics may both hold wildcards: a
  subscription receives a publish when some topic matches both ('a/*' gets 'a/b', not 'a/b/c';
  'a/**' gets 'a/b/c', not 'a'; a publish on 'a/*' reaches 'a/b' and 'a/**' subscribers).
  Requests and served topics are exact (no wildcards).

Delivery:
  Subscribers are tethered by default: publishers wait for them (up to the broker's
  --evict-after, 5 s, for one that stops reading); --lossy subscribers never hold anyone back
  and report what they missed. --history N replays what the ring still holds; a topic's ring
  is released after --ring-idle (60 s) without publishers or subscribers, and its history
  with it.

Exit codes:
  0 success, 1 error, 2 usage (including an invalid topic), 3 cannot reach the broker,
  4 timeout, 5 nobody serves the topic (req), 6 permission denied (the broker's --acl).

Environment:
  SHMBUS_BUS         the default bus (a name, a socket path, tcp://HOST:PORT or tls://HOST:PORT)
  SHMBUS_TLS_CA, SHMBUS_TLS_CERT, SHMBUS_TLS_KEY
                     --tls-ca, --tls-cert and --tls-key of clients of a tls:// bus
  SHMBUS_BROKER_UID  also trust a broker running as this uid (a service account)
  RUST_LOG           log filter (default: info for the broker, warn for the rest), e.g. RUST_LOG=debug
  NO_COLOR           no colours in logs (there are none unless stderr is a terminal)";

/// What a command returns.
pub type Outcome = Result<(), Failure>;

/// shmbus: a shared-memory publish/subscribe and request/response bus for processes on one host.
#[derive(Debug, Parser)]
#[command(
    name = "shmbus",
    version,
    propagate_version = true,
    after_long_help = LONG_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The bus to use: a name or a socket path; default $SHMBUS_BUS, else "default".
#[derive(Clone, Debug, clap::Args)]
pub struct BusArg {
    /// Bus address: a name, a socket path (contains '/'), or a broker's gateway at
    /// tcp://HOST:PORT or tls://HOST:PORT.
    #[arg(long = "bus", value_name = "ADDR", env = crate::address::BUS_ENV, default_value = crate::address::DEFAULT_NAME)]
    bus: String,
    /// Give up (exit 3) if the broker does not answer within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    connect_timeout: f64,
    /// Hold this session: the broker keeps the subscriptions for its --session-grace after
    /// this command ends or dies, and the next command with the same session takes them up
    /// where they stood.
    #[arg(long, value_name = "NAME")]
    session: Option<String>,
    /// tls:// only: check the gateway's certificate against this CA (PEM) instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE", env = crate::transport::tls::TLS_CA_ENV)]
    tls_ca: Option<PathBuf>,
    /// tls:// only: present this certificate (PEM chain) to a gateway that requires one.
    #[arg(long, value_name = "FILE", env = crate::transport::tls::TLS_CERT_ENV, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// tls:// only: the key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", env = crate::transport::tls::TLS_KEY_ENV, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The socket a broker serves: a name or a socket path; default $SHMBUS_BUS, else "default".
#[derive(Clone, Debug, clap::Args)]
pub struct SocketArg {
    /// Bus address: a name, or a socket path (contains '/').
    #[arg(long = "bus", value_name = "ADDR", env = crate::address::BUS_ENV, default_value = crate::address::DEFAULT_NAME)]
    bus: String,
}

impl SocketArg {
    fn address(&self) -> Result<BusAddress, Failure> {
        parse_address(&self.bus)
    }
}

/// The address `bus`, or the usage error that says why it is none.
fn parse_address(bus: &str) -> Result<BusAddress, Failure> {
    BusAddress::parse(bus).map_err(|e| Failure::new(Exit::Usage, e))
}

impl BusArg {
    fn address(&self) -> Result<BusAddress, Failure> {
        parse_address(&self.bus)
    }

    /// Connects to the bus.
    fn connect(&self) -> Result<Bus, Failure> {
        let timeout = self.connect_timeout;
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(Failure::new(
                Exit::Usage,
                format!("--connect-timeout must be a positive number of seconds, not {timeout}"),
            ));
        }
        let builder = Bus::builder()
            .address(self.address()?)
            .connect_timeout(std::time::Duration::from_secs_f64(timeout));
        let builder = match &self.session {
            Some(name) => builder.session(name),
            None => builder,
        };
        let mut tls = TlsClientFiles::default();
        if let Some(ca) = &self.tls_ca {
            tls = tls.ca(ca);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.identity(cert, key);
        }
        Ok(builder.tls(tls).connect()?)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker: serve the bus's control socket until SIGINT or SIGTERM.
    Broker(broker::Args),
    /// Publish messages: each MESSAGE is one message; without any, each line of stdin is one.
    Pub(publish::Args),
    /// Subscribe and print one line per message (tethered: publishers wait for it; --lossy:
    /// never).
    Sub(subscribe::Args),
    /// Send a request and print the response (each response of a stream on its own line).
    Req(request::Args),
    /// Serve a topic: answer each request with its payload (--echo) or a command's output.
    Serve(serve::Args),
    /// Watch, publish or read state collections (key/value).
    State(state::Args),
    /// Start a broker, a publisher and a subscriber in separate processes, show messages and a
    /// latency summary, and exit.
    Demo(demo::Args),
    /// Measure latency, throughput or fan-out across processes (HDR percentiles).
    Bench(bench::Args),
    /// (Used by `bench`.) One of the benchmark's child processes.
    #[command(hide = true, name = "bench-role")]
    BenchRole(bench::RoleArgs),
    /// (Used by `demo`.) The demo's publisher process.
    #[command(hide = true, name = "demo-publisher")]
    DemoPublisher(demo::ChildArgs),
    /// (Used by `demo`.) The demo's subscriber process.
    #[command(hide = true, name = "demo-subscriber")]
    DemoSubscriber(demo::ChildArgs),
}

/// Parses the command line, runs the command, and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Broker(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only for a person at a terminal: never into files or pipes, never with NO_COLOR.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let outcome = match cli.command {
        Command::Broker(args) => broker::run(args),
        Command::Pub(args) => publish::run(args),
        Command::Sub(args) => subscribe::run(args),
        Command::Req(args) => request::run(args),
        Command::Serve(args) => serve::run(args),
        Command::State(args) => state::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchRole(args) => bench::role(args),
        Command::DemoPublisher(args) => demo::publisher(args),
        Command::DemoSubscriber(args) => demo::subscriber(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("shmbus: {}", f.message);
            ExitCode::from(f.code as u8)
        }
    }
}
