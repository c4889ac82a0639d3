//! The `corral` command: runs the server and administers it.

mod admin;
mod client;
mod config;
mod error;
mod malloc;
mod private;
mod serve;
mod single;
mod store;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use config::{ServeArgs, StoreArgs};

/// Corral deploys, secures and scales Ollama-compatible LLM servers on your own compute.
///
/// Start with `corral serve`, then open the printed URL. Every option can also be set
/// with a CORRAL_* environment variable or in corral.toml (flags win, then environment,
/// then the file).
#[derive(Debug, Parser)]
#[command(name = "corral", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: management API, gateway and web UI on one port.
    ///
    /// With no users yet, it prints a one-time setup token for creating the first admin.
    Serve(Box<ServeArgs>),
    /// Administer a Corral installation directly through its store.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn main() -> ExitCode {
    malloc::return_large_blocks();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // One worker per core (tokio's default, or TOKIO_WORKER_THREADS): the gateway
        // proxies every model request, so it must scale with the machine.
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(&cli.store, *args).await,
            Command::Admin(cmd) => admin::run(&cli.store, cmd).await,
            Command::Client(cmd) => client::run(&cli.store, cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
