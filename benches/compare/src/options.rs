//! The command-line options every binary of this crate shares (clap), and picking transports by
//! name.

/// `--runs N`, `--quick` and the transports to run.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// How many runs; each measures every case once, and the tables give medians across runs.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = positive)]
    pub runs: usize,
    /// A tenth of the round trips (and messages), for a quick look.
    #[arg(long)]
    pub quick: bool,
    /// Transports to run, by name (default: all of them).
    #[arg(value_name = "TRANSPORT")]
    pub transports: Vec<String>,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// The entries of `all` that `names` name, in `all`'s order (every one when `names` is empty).
pub fn select<T: Copy>(all: &[T], name: fn(&T) -> &'static str, names: &[String]) -> Vec<T> {
    if names.is_empty() {
        return all.to_vec();
    }
    all.iter()
        .filter(|t| names.iter().any(|n| n == name(t)))
        .copied()
        .collect()
}

/// Exits with a usage error if some of `names` is none of `known`.
pub fn check_names(names: &[String], known: &[&str]) {
    if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
        eprintln!(
            "error: unknown transport {unknown:?}; known: {}",
            known.join(" ")
        );
        std::process::exit(2);
    }
}
