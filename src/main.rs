//! The `ringraft` command line: parses arguments with clap, runs the chosen command, and
//! renders errors for humans. Decisions live in the library; this file only wires them.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ringraft",
    version,
    about = "A replicated, strongly consistent key-value server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the version and the build profile.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            let profile = if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            };
            println!("ringraft {} ({profile})", env!("CARGO_PKG_VERSION"));
        }
    }
    Ok(())
}
