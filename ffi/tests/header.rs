//! The committed header `ffi/include/shmbus.h` is exactly what cbindgen generates from the code,
//! and it compiles cleanly as C11 and as C++17 with warnings as errors.
//!
//! After changing the C API, regenerate the header with
//! `SHMBUS_BLESS=1 cargo test -p shmbus-ffi --test header` and commit it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    crate_dir().join("include/shmbus.h")
}

/// The header cbindgen makes from `src/` with `cbindgen.toml`.
fn generate() -> String {
    let config = cbindgen::Config::from_file(crate_dir().join("cbindgen.toml"))
        .expect("read ffi/cbindgen.toml");
    // `with_src` parses the crate's sources (following `mod` declarations) without running
    // `cargo metadata`, so the test needs nothing but the files.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir().join("src/lib.rs"))
        .generate()
        .expect("cbindgen failed to generate the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("cbindgen wrote UTF-8")
}

#[test]
fn committed_header_is_what_the_code_generates() {
    let fresh = generate();
    let path = header_path();
    if std::env::var_os("SHMBUS_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &fresh).expect("write ffi/include/shmbus.h");
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let first = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()));
        panic!(
            "{} is out of date with the code (first difference at line {}):\n  committed: {:?}\n  \
             generated: {:?}\nRegenerate it with `SHMBUS_BLESS=1 cargo test -p shmbus-ffi --test \
             header` and commit it.",
            path.display(),
            first + 1,
            committed.lines().nth(first).unwrap_or("<end of file>"),
            fresh.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

/// Every `extern "C"` function in the sources, with the doc comment above it.
fn exported_functions() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(crate_dir().join("src")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line
                .strip_prefix("pub unsafe extern \"C\" fn ")
                .or_else(|| line.strip_prefix("pub extern \"C\" fn "))
            else {
                continue;
            };
            let name = rest.split('(').next().unwrap().to_string();
            let doc: Vec<&str> = lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.starts_with("///") || l.starts_with("#["))
                .copied()
                .collect();
            found.push((name, doc.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
    }
    found
}

#[test]
fn every_exported_function_is_documented_in_the_header_with_a_safety_section() {
    let header = generate();
    let lines: Vec<&str> = header.lines().collect();
    let exported = exported_functions();
    assert!(exported.len() > 25, "found only {exported:?}");
    for (name, doc) in &exported {
        assert!(
            doc.contains("#[unsafe(no_mangle)]"),
            "{name} is not #[unsafe(no_mangle)]"
        );
        assert!(
            doc.contains("/// # Safety"),
            "{name} has no `# Safety` section"
        );
        assert!(
            doc.contains("Thread safety") || doc.contains("thread"),
            "{name} says nothing about threads"
        );
        let declares = |l: &str| {
            l.match_indices(&format!("{name}("))
                .any(|(i, _)| !l[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        };
        let at = lines
            .iter()
            .position(|l| declares(l) && !l.trim_start().starts_with("//"))
            .unwrap_or_else(|| panic!("{name} is not declared in the header"));
        // Above the declaration (whose return type may have its own line) is its documentation.
        let above = lines[..at]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap();
        assert!(
            above.trim_start().starts_with("//"),
            "{name} has no documentation in the header"
        );
    }
}

fn compile_header_check(compiler: &str, args: &[&str]) {
    let source = crate_dir().join("tests/c/header_check.c");
    let out = std::env::temp_dir().join(format!(
        "shmbus-header-check-{}-{compiler}.o",
        std::process::id()
    ));
    let status = Command::new(compiler)
        .args(args)
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-c", "-o"])
        .arg(&out)
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
    let _ = std::fs::remove_file(&out);
    assert!(
        status.success(),
        "{compiler} {args:?} -Wall -Wextra -Werror -pedantic rejects ffi/include/shmbus.h"
    );
}

#[test]
fn header_compiles_as_c11() {
    compile_header_check("cc", &["-std=c11", "-Wstrict-prototypes"]);
}

#[test]
fn header_compiles_as_cpp17() {
    compile_header_check("c++", &["-std=c++17", "-x", "c++"]);
}
