//! `lo`: the liveobjects command-line host.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if args.verbose { "debug" } else { "warn" })
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = cli::run(args) {
        // `{:#}` prints the whole context chain on one line, without a backtrace.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
