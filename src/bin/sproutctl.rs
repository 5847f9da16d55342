//! sproutctl: parse arguments, run the subcommand, print one line on error.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Output piped into `head` and the like: end quietly when the reader
    // goes, as Unix tools do, instead of panicking on a broken pipe.
    // SAFETY: restoring the default disposition of one signal before any
    // other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = sprout::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sproutctl: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(sprout::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sproutctl: {e}");
            ExitCode::FAILURE
        }
    }
}
