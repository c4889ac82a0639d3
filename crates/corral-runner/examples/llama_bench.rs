//! llama.cpp's own speed on this machine, for `bench/runner.sh` to compare the runner
//! with: the same llama.cpp build, driven directly the way `llama-bench` and
//! `llama-batched-bench` do it (no HTTP, no sampling, fixed token ids).
//!
//! Usage: llama_bench MODEL.gguf [THREADS [CASES]]
//! CASES is a comma-separated subset of `pp,tg,par8,par8e2e` (default: all). Prints one
//! `<case> <tok/s>` line per case:
//!   pp       one 512-token prompt in one batch (llama-bench pp512)
//!   tg       128 tokens, one sequence (llama-bench tg128)
//!   par8     128 tokens in each of 8 sequences, no prompt (llama-batched-bench's S_TG)
//!   par8e2e  the same after a 12-token prompt per sequence, all 8 prompts in one batch,
//!            timed from the prompts to the last token: the work an 8-request burst
//!            asks of the runner, for its end-to-end figure

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
/// About what `bench/runner.sh`'s parallel requests tokenize to.
const PARALLEL_PROMPT: usize = 12;
const CASES: [&str; 4] = ["pp", "tg", "par8", "par8e2e"];

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model_path = args
        .next()
        .ok_or("usage: llama_bench MODEL.gguf [THREADS [CASES]]")?;
    let threads: i32 = args.next().map_or(Ok(2), |t| t.parse())?;
    let cases: Vec<String> = match args.next() {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None => CASES.map(str::to_owned).to_vec(),
    };
    if let Some(unknown) = cases.iter().find(|c| !CASES.contains(&c.as_str())) {
        return Err(format!("unknown case {unknown}; known: {}", CASES.join(",")).into());
    }
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

    for case in &cases {
        let rate = match case.as_str() {
            "pp" => PROMPT as f64 / best_of(3, || run_prompt(&mut ctx, token, PROMPT))?,
            "tg" => GENERATE as f64 / best_of(3, || run_generation(&mut ctx, token, 1, 0))?,
            "par8" => {
                let secs = best_of(2, || run_generation(&mut ctx, token, PARALLEL, 0))?;
                (GENERATE * PARALLEL) as f64 / secs
            }
            _ => {
                let secs = best_of(2, || {
                    run_generation(&mut ctx, token, PARALLEL, PARALLEL_PROMPT)
                })?;
                (GENERATE * PARALLEL) as f64 / secs
            }
        };
        println!("{case} {rate:.1}");
    }
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
/// sequence per decode. With a `prompt`, each sequence first reads that many tokens, all
/// sequences in one batch, and the first generated token comes from that batch's logits
/// (as a server samples it), so `GENERATE - 1` decodes follow.
fn run_generation(
    ctx: &mut LlamaContext<'_>,
    token: LlamaToken,
    seqs: usize,
    prompt: usize,
) -> Result<f64> {
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new((seqs * prompt).max(seqs), 1);
    let start = Instant::now();
    let mut steps = 0..GENERATE;
    if prompt > 0 {
        for seq in 0..seqs {
            for pos in 0..prompt {
                batch.add(token, pos as i32, &[seq as i32], pos + 1 == prompt)?;
            }
        }
        ctx.decode(&mut batch)?;
        steps = prompt..prompt + GENERATE - 1;
    }
    for pos in steps {
        batch.clear();
        for seq in 0..seqs {
            batch.add(token, pos as i32, &[seq as i32], true)?;
        }
        ctx.decode(&mut batch)?;
    }
    Ok(start.elapsed().as_secs_f64())
}
