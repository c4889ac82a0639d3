//! `corral admin ...`: maintenance that works directly on the store, e.g. creating
//! the first admin before the server has ever run.

use clap::{Parser, Subcommand};
use corral_api::auth::cognito::{AuthMode, CognitoSettings};
use corral_core::{Role, User, password, user};
use tokio::io::AsyncBufReadExt;

use crate::config::{FileConfig, ServeArgs, StoreArgs, StoreConfig, auth_mode};
use crate::error::CliError;

/// `corral serve`'s settings as the environment (CORRAL_*) sets them, so that admin
/// commands see the auth mode the server runs with (the environment, then corral.toml).
#[derive(Parser)]
struct ServeEnv {
    #[command(flatten)]
    serve: ServeArgs,
}

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
            let serve = ServeEnv::try_parse_from(["corral"])
                .map_err(|e| CliError::Invalid(format!("CORRAL_* settings: {e}")))?
                .serve;
            if let AuthMode::Cognito(pool) = auth_mode(&serve, &file)? {
                // An account made here would have a password Corral never checks in
                // this mode (login goes to the pool), so it could not sign in.
                return Err(CliError::Invalid(cognito_hint(&pool, &email, role)));
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
            corral_guard::files::create_private_dir(&cfg.data_dir)
                .map_err(CliError::io(format!("creating {}", cfg.data_dir.display())))?;
            let store = crate::store::open(&cfg.database_url).await?;
            let passwords = corral_api::auth::password::Passwords::new(
                crate::serve::argon2_params(&file),
                crate::serve::hash_limits(&file),
            );
            let hash = passwords.hash(pass).await?;
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

/// How to add the account where it has to live in auth mode cognito: the pool, with the
/// group that gives `role`. The password is set permanent, because Corral's login does
/// not answer Cognito's new-password challenge that a temporary one starts with.
fn cognito_hint(pool: &CognitoSettings, email: &str, role: Role) -> String {
    let pool_args = format!(
        "--region {} --user-pool-id {} --username {email}",
        pool.region, pool.user_pool_id
    );
    let group = pool.roles.group_for(role);
    format!(
        "auth mode is cognito: accounts live in the Amazon Cognito user pool {}, and one \
         made here could not sign in. Add the user to the pool instead:\n  \
         aws cognito-idp admin-create-user {pool_args} --message-action SUPPRESS \
         --user-attributes Name=email,Value={email} Name=email_verified,Value=true\n  \
         aws cognito-idp admin-set-user-password {pool_args} --permanent --password '...'\n  \
         aws cognito-idp admin-add-user-to-group {pool_args} --group-name {group}\n\
         or let them sign up in the web UI and add them to the {group:?} group.",
        pool.user_pool_id
    )
}
