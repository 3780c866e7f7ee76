//! The `shmbus` command: broker, pub, sub, demo. See `shmbus --help`.

fn main() -> std::process::ExitCode {
    shmbus::cli::main()
}
