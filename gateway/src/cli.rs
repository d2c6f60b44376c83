//! The command line: `palisade serve` runs the gateway, `palisade demo` shows it at work.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "palisade", version, about = "A policy gateway for AI agents")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// The config file.
        #[arg(long, short, default_value = "palisade.toml", env = "PALISADE_CONFIG")]
        config: PathBuf,
        /// Override `server.listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override `upstream.base_url`.
        #[arg(long)]
        upstream_url: Option<String>,
    },
    /// Start the mock upstream and the gateway on the example config and watch the policy work.
    Demo {
        /// The config to demo.
        #[arg(long, default_value = "examples/palisade.toml")]
        config: PathBuf,
        /// Where the gateway listens during the demo.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Keep serving after the scenes, until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
}
