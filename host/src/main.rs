//! `lo`: the liveobjects command-line host.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // openraft reports every unreachable peer at warn and error level, a
                // few times a second while a member is down: routine for a group, so
                // it is heard only when asked for (RUST_LOG=openraft=warn).
                tracing_subscriber::EnvFilter::new(if args.verbose {
                    "debug,openraft=info"
                } else {
                    "warn,openraft=off"
                })
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
