//! The `mock-upstream` binary: binds the address given by `--listen`, prints
//! `mock-upstream listening on http://ADDR` once bound, and serves the fake OpenAI API until killed.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use mock_upstream::{DEFAULT_MAX_RECORDED, MockState};

/// A fake OpenAI-compatible LLM provider with per-request fault injection.
#[derive(Parser, Debug)]
#[command(name = "mock-upstream", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,

    /// How many requests to keep for GET /_mock/requests (0 records nothing).
    #[arg(long, default_value_t = DEFAULT_MAX_RECORDED)]
    max_recorded: usize,

    /// Serve only the fake MCP desk, over stdin/stdout, instead of listening.
    #[arg(long)]
    mcp_stdio: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.mcp_stdio {
        return Ok(mock_upstream::mcp::serve_stdio(&MockState::default())?);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "mock-upstream listening on http://{addr}")?;
        out.flush()?;
    }
    mock_upstream::serve(listener, MockState::with_max_recorded(args.max_recorded)).await
}
