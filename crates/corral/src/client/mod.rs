//! `corral login`, `models`, `deploy`, `ps`, `logs`, `stop`, `start`, `rm`, `chat`: a
//! client for a Corral server's API in the same binary. Everything but
//! `models import` talks HTTP; `models import` works on the data dir and store directly,
//! like `corral admin`, because it reads a file on the server's machine.

mod chat;
mod instances;
mod login;
mod models;
mod output;
mod session;

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::StoreArgs;
use crate::error::CliError;

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Sign in to a Corral server and save the tokens for the other commands.
    ///
    /// Prompts for the password without echo (or reads it from stdin with
    /// --password-stdin), then for the authenticator code when the account has MFA.
    /// Tokens go to ~/.config/corral/credentials.json (mode 0600) and are refreshed
    /// automatically. Programs can skip this with CORRAL_API_KEY=crl_... and CORRAL_URL.
    Login(LoginArgs),
    /// Forget the saved login and end its session on the server.
    Logout,
    /// List the model catalog, or manage it: `corral models import FILE --name N`.
    Models(ModelsArgs),
    /// Deploy a model and show its progress until it is ready.
    ///
    /// Example: corral deploy smollm2:135m --cpu 2 --memory 2048 --idle 30m --replicas 1..2
    ///
    /// What is left out is the smallest size that fits the model on local compute;
    /// `GET /api/compute` (or the web UI) lists the sizes this server offers.
    Deploy(DeployArgs),
    /// List your instances (admins and viewers: everyone's).
    Ps,
    /// Print an instance's logs; -f keeps following them.
    Logs(LogsArgs),
    /// Stop an instance and wait until its replicas are gone.
    Stop(StopArgs),
    /// Start a stopped, sleeping or failed instance again and wait until it is ready.
    Start(InstanceArg),
    /// Delete an instance (it is stopped first); its usage stays in the reports.
    Rm(InstanceArg),
    /// Chat with an instance, streaming the answer as it is generated.
    ///
    /// Interactive by default (/reset clears the conversation, /exit or Ctrl-D quits);
    /// with a PROMPT it answers once and exits. A sleeping instance wakes up first.
    Chat(ChatArgs),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Server URL. Default: CORRAL_URL, else the last login's, else http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Account e-mail; prompted for when left out.
    #[arg(long, value_name = "EMAIL")]
    pub email: Option<String>,
    /// Read the password (and then an MFA code, if asked) from standard input lines.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: Option<ModelsCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The catalog with memory needs, deploy times and whether weights are here (default).
    List,
    /// Fetch a model's weights now so the first deploy does not wait (admin).
    Pull {
        /// Model id, e.g. llama2:7b.
        model: String,
    },
    /// Import a local GGUF into the catalog (on the server's machine; uses the data dir
    /// and store directly, like `corral admin`).
    ///
    /// Example: corral models import ./phi3-mini.Q4_K_M.gguf --name phi3:mini
    Import {
        /// The GGUF file.
        file: PathBuf,
        /// Model id users deploy, e.g. phi3:mini.
        #[arg(long)]
        name: String,
        /// Memory the model needs in MiB. Default: estimated from the file size.
        #[arg(long, value_name = "MIB")]
        memory: Option<u32>,
    },
    /// Delete local weights that no catalog entry or instance needs: registry and URL
    /// models no instance uses (a deploy downloads them again) and models gone from the
    /// catalog; imported files and the weights of instances not deleted stay. On the
    /// server's machine (data dir and store directly). Prints what it frees; a dry run
    /// unless --apply.
    Gc {
        /// Delete the files (default: only list them).
        #[arg(long, conflicts_with = "dry_run")]
        apply: bool,
        /// Only list what would be freed (the default).
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Model id from `corral models`, e.g. smollm2:135m.
    pub model: String,
    /// local, fargate or gpu. Default: local.
    #[arg(long, value_name = "KIND")]
    pub compute: Option<String>,
    /// vCPUs, e.g. 0.5 or 2.
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Memory: MiB, or with a unit (2048, 2G, 512M).
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u32>,
    /// GPUs (gpu compute).
    #[arg(long, value_name = "N")]
    pub gpus: Option<u32>,
    /// EC2 instance type (gpu compute), e.g. g5.xlarge.
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// Use spot capacity where offered.
    #[arg(long)]
    pub spot: bool,
    /// Sleep after this long without requests (30m, 1h); 0 never. Default 30m.
    #[arg(long, value_name = "DURATION", value_parser = parse_idle)]
    pub idle: Option<u32>,
    /// Replica range MIN..MAX, or one number. Default 1.
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_replicas)]
    pub replicas: Option<(u32, u32)>,
    /// When idle, stop instead of sleeping (no wake on the next request).
    #[arg(long)]
    pub no_wake: bool,
    /// Return once the instance is created instead of waiting until it is ready.
    #[arg(long, short = 'd')]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct InstanceArg {
    /// Instance id (or a unique prefix of it) from `corral ps`.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Instance id (or a unique prefix of it) from `corral ps`.
    pub id: String,
    /// Return at once instead of waiting until it has stopped.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Instance id (or a unique prefix of it) from `corral ps`.
    pub id: String,
    /// Keep printing new lines until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Lines to show first.
    #[arg(long, short = 'n', default_value_t = 200)]
    pub tail: usize,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Instance id (or a unique prefix of it) from `corral ps`.
    pub id: String,
    /// Ask this once and exit instead of starting a conversation.
    pub prompt: Option<String>,
    /// A system message for the conversation.
    #[arg(long)]
    pub system: Option<String>,
}

pub async fn run(store: &StoreArgs, cmd: ClientCommand) -> Result<(), CliError> {
    match cmd {
        ClientCommand::Login(args) => login::login(args).await,
        ClientCommand::Logout => login::logout().await,
        ClientCommand::Models(args) => match args.command.unwrap_or(ModelsCommand::List) {
            ModelsCommand::List => models::list().await,
            ModelsCommand::Pull { model } => models::pull(&model).await,
            ModelsCommand::Import { file, name, memory } => {
                models::import(store, &file, &name, memory).await
            }
            ModelsCommand::Gc { apply, .. } => models::gc(store, !apply).await,
        },
        ClientCommand::Deploy(args) => instances::deploy(args).await,
        ClientCommand::Ps => instances::ps().await,
        ClientCommand::Logs(args) => instances::logs(args).await,
        ClientCommand::Stop(args) => instances::stop(args).await,
        ClientCommand::Start(args) => instances::start(&args.id).await,
        ClientCommand::Rm(args) => instances::remove(&args.id).await,
        ClientCommand::Chat(args) => chat::chat(args).await,
    }
}

/// MiB, or a number with K/M/G (binary units), e.g. `2048`, `2G`, `512MiB`.
fn parse_memory(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a memory size (examples: 2048, 2G, 512M)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mi" | "mib" | "mb" => 1.0,
        "g" | "gi" | "gib" | "gb" => 1024.0,
        other => return Err(format!("unknown unit {other:?}: use M or G")),
    };
    let mib = value * factor;
    if mib < 1.0 || mib > f64::from(u32::MAX) || mib.fract() != 0.0 {
        return Err(format!("{s:?} is not a whole number of MiB"));
    }
    Ok(mib as u32)
}

/// `30m`, `1h`, `90s`; `0` or `never` turns idle shutdown off.
fn parse_idle(s: &str) -> Result<u32, String> {
    if matches!(s, "0" | "never" | "off") {
        return Ok(0);
    }
    let d: Duration = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (examples: 90s, 30m, 2h; 0 for never)"))?;
    u32::try_from(d.as_secs()).map_err(|_| "too long".into())
}

/// `2` (fixed) or `1..3`.
fn parse_replicas(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a replica range (examples: 1, 2, 1..3)");
    match s.split_once("..") {
        Some((min, max)) => Ok((
            min.trim().parse().map_err(|_| bad())?,
            max.trim().parse().map_err(|_| bad())?,
        )),
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            Ok((n, n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_durations_and_ranges() {
        assert_eq!(parse_memory("2048"), Ok(2048));
        assert_eq!(parse_memory("2G"), Ok(2048));
        assert_eq!(parse_memory("512MiB"), Ok(512));
        assert_eq!(parse_memory("1.5g"), Ok(1536));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("2T").is_err());
        assert_eq!(parse_idle("30m"), Ok(1800));
        assert_eq!(parse_idle("never"), Ok(0));
        assert!(parse_idle("soon").is_err());
        assert_eq!(parse_replicas("1..3"), Ok((1, 3)));
        assert_eq!(parse_replicas("2"), Ok((2, 2)));
        assert!(parse_replicas("a..b").is_err());
    }
}
