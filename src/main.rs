//! The `baton` binary: everything lives in [`baton::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    match baton::cli::run(std::env::args_os()) {
        Ok(code) => code,
        Err(err) => baton::cli::report(&err),
    }
}
