//! llama.cpp's own speed on this machine, for `bench/runner.sh` to compare the runner
//! with: the same llama.cpp build, driven directly the way `llama-bench` and
//! `llama-batched-bench` do it (no HTTP, no sampling, fixed token ids).
//!
//! Usage: llama_bench MODEL.gguf [THREADS]
//! Prints `pp <tok/s>`, `tg <tok/s>` and `par8 <tok/s>` lines.

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

const PROMPT: usize = 512;
const GENERATE: usize = 128;
const PARALLEL: usize = 8;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model_path = args
        .next()
        .ok_or("usage: llama_bench MODEL.gguf [THREADS]")?;
    let threads: i32 = args.next().map_or(Ok(2), |t| t.parse())?;
    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, model_path, &LlamaModelParams::default())?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(((PROMPT + GENERATE) * PARALLEL) as u32))
        .with_n_batch(PROMPT as u32)
        .with_n_ubatch(PROMPT as u32)
        .with_n_seq_max(PARALLEL as u32)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model.new_context(&backend, params)?;
    let token = LlamaToken::new(model.n_vocab() / 2);

    // Warm-up, as llama-bench does.
    run_prompt(&mut ctx, token, 16)?;

    let pp = best_of(3, || run_prompt(&mut ctx, token, PROMPT))?;
    println!("pp {:.1}", PROMPT as f64 / pp);
    let tg = best_of(3, || run_generation(&mut ctx, token, 1))?;
    println!("tg {:.1}", GENERATE as f64 / tg);
    let par = best_of(2, || run_generation(&mut ctx, token, PARALLEL))?;
    println!("par8 {:.1}", (GENERATE * PARALLEL) as f64 / par);
    Ok(())
}

fn best_of(n: usize, mut run: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..n {
        best = best.min(run()?);
    }
    Ok(best)
}

/// Seconds to evaluate an `n`-token prompt in one batch.
fn run_prompt(ctx: &mut LlamaContext<'_>, token: LlamaToken, n: usize) -> Result<f64> {
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(n, 1);
    for pos in 0..n {
        batch.add(token, pos as i32, &[0], pos + 1 == n)?;
    }
    let start = Instant::now();
    ctx.decode(&mut batch)?;
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds to generate `GENERATE` tokens in each of `seqs` sequences, one token per
/// sequence per decode.
fn run_generation(ctx: &mut LlamaContext<'_>, token: LlamaToken, seqs: usize) -> Result<f64> {
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(seqs, 1);
    let start = Instant::now();
    for pos in 0..GENERATE {
        batch.clear();
        for seq in 0..seqs {
            batch.add(token, pos as i32, &[seq as i32], true)?;
        }
        ctx.decode(&mut batch)?;
    }
    Ok(start.elapsed().as_secs_f64())
}
