//! `corral admin ...`: maintenance that works directly on the store, e.g. creating
//! the first admin before the server has ever run.

use clap::Subcommand;
use corral_core::{Role, User, password, user};
use tokio::io::AsyncBufReadExt;

use crate::config::{FileConfig, StoreArgs, StoreConfig};
use crate::error::CliError;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a verified account, e.g. the first admin:
    /// `echo 'S3cure!pass' | corral admin create-user --email me@example.com --password-stdin --role admin`
    CreateUser {
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input (keeps it out of
        /// shell history and the process list).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// admin, user or viewer.
        #[arg(long, default_value = "user")]
        role: Role,
    },
}

pub async fn run(store_args: &StoreArgs, cmd: AdminCommand) -> Result<(), CliError> {
    let file = FileConfig::load(store_args.config.as_deref())?;
    let cfg = StoreConfig::resolve(store_args, &file);
    match cmd {
        AdminCommand::CreateUser { email, role, .. } => {
            if !user::is_valid_email(&email) {
                return Err(CliError::Invalid(format!(
                    "{email:?} is not a valid e-mail address"
                )));
            }
            let mut line = String::new();
            tokio::io::BufReader::new(tokio::io::stdin())
                .read_line(&mut line)
                .await
                .map_err(CliError::io("reading the password from stdin"))?;
            let pass = line.trim_end_matches(['\r', '\n']).to_string();
            let failed = password::check(&pass);
            if !failed.is_empty() {
                return Err(CliError::Invalid(password::explain(&failed)));
            }
            std::fs::create_dir_all(&cfg.data_dir)
                .map_err(CliError::io(format!("creating {}", cfg.data_dir.display())))?;
            let store = crate::store::open(&cfg.database_url).await?;
            let argon2 = crate::serve::argon2_params(&file);
            let hash = corral_api::auth::password::hash(pass, argon2).await?;
            let mut account = User::new(&email, hash, role, chrono::Utc::now());
            account.email_verified = true;
            match store.create_user(&account).await {
                Ok(()) => {
                    println!("created {} ({role}) id {}", account.email, account.id);
                    Ok(())
                }
                Err(corral_store::Error::Conflict(_)) => Err(CliError::Invalid(format!(
                    "a user with e-mail {} already exists",
                    account.email
                ))),
                Err(e) => Err(e.into()),
            }
        }
    }
}
