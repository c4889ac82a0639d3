//! Command-line interface.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::Parser;

/// Ollama- and OpenAI-compatible LLM server on llama.cpp.
///
/// Loads one GGUF model and serves it under a single name. Once the socket is bound the
/// runner prints `listening on http://HOST:PORT` on stdout (the only line it writes there),
/// so a parent process can start it with `--port 0` and read the actual address back.
/// Logs go to stderr; set RUST_LOG (e.g. `RUST_LOG=debug`) for more detail.
#[derive(Debug, Parser)]
#[command(name = "corral-runner", version, about, long_about)]
pub struct Args {
    /// Path of the GGUF model file to serve.
    #[arg(long, value_name = "PATH.gguf")]
    pub model: PathBuf,

    /// Name clients use for the model (`model` field of requests), Ollama style `name:tag`.
    /// Defaults to the file name without extension.
    #[arg(long)]
    pub name: Option<String>,

    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to bind; 0 picks a free port (see the printed `listening on` line).
    #[arg(long, default_value_t = 11434)]
    pub port: u16,

    /// Number of slots: requests that generate at the same time, decoded together in one
    /// batch. Further requests wait in the queue.
    #[arg(long, default_value_t = NonZeroU32::new(4).expect("nonzero"))]
    pub parallel: NonZeroU32,

    /// Context length of each slot, in tokens (prompt + answer). The KV cache holds
    /// `ctx * parallel` tokens. A request's `num_ctx` may be smaller, never larger.
    #[arg(long, default_value_t = NonZeroU32::new(4096).expect("nonzero"))]
    pub ctx: NonZeroU32,

    /// CPU threads used by llama.cpp. Defaults to the number of available cores.
    #[arg(long)]
    pub threads: Option<NonZeroU32>,

    /// Requests that may wait for a free slot; beyond that the server answers 503.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,

    /// A Jinja chat template to use instead of the model's own (as Ollama's Modelfile
    /// `TEMPLATE`): e.g. one that renders `tools`, for a model whose template does not.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,

    /// Free a slot's KV cache after each request instead of keeping it for the next
    /// request that starts with the same tokens (prompt caching, on by default).
    #[arg(long)]
    pub no_cache_prompt: bool,
}

impl Args {
    /// The model name, falling back to the file stem.
    pub fn model_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".to_owned())
        })
    }

    pub fn threads(&self) -> u32 {
        self.threads.map(NonZeroU32::get).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(1))
                .unwrap_or(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn name_defaults_to_file_stem() {
        let args = Args::parse_from(["corral-runner", "--model", "/m/smollm2-135m.gguf"]);
        assert_eq!(args.model_name(), "smollm2-135m");
        assert_eq!(args.parallel.get(), 4);
        let args = Args::parse_from(["corral-runner", "--model", "x.gguf", "--name", "a:b"]);
        assert_eq!(args.model_name(), "a:b");
    }
}
