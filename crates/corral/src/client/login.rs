//! `corral login` and `corral logout`.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::{Value, json};

use super::LoginArgs;
use super::session::{
    self, Credentials, DEFAULT_URL, api_error, connect_error, credentials_path, http_client,
};
use crate::error::CliError;

/// One line from stdin without its line break; `what` names it in the error.
fn read_line(what: &str) -> Result<String, CliError> {
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(CliError::io(format!("reading the {what}")))?;
    if n == 0 {
        return Err(CliError::Invalid(format!(
            "no {what} on standard input (it ended first)"
        )));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn prompt(label: &str, what: &str) -> Result<String, CliError> {
    eprint!("{label}");
    let _ = std::io::stderr().flush();
    read_line(what)
}

pub async fn login(args: LoginArgs) -> Result<(), CliError> {
    let path = credentials_path()?;
    let saved = session::load(&path).ok().flatten();
    let url = args
        .url
        .or_else(|| std::env::var("CORRAL_URL").ok().filter(|u| !u.is_empty()))
        .or_else(|| saved.as_ref().map(|c| c.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_string())
        .trim_end_matches('/')
        .to_string();
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(CliError::Invalid(format!(
            "{url:?} is not a URL; use e.g. --url http://127.0.0.1:8080"
        )));
    }
    let interactive = !args.password_stdin && std::io::stdin().is_terminal();
    let email = match args.email {
        Some(email) => email,
        None if interactive => prompt("E-mail: ", "e-mail")?,
        None => {
            return Err(CliError::Invalid(
                "--email is required when the password comes from stdin".into(),
            ));
        }
    };
    let password = if args.password_stdin {
        read_line("password")?
    } else if interactive {
        rpassword::prompt_password("Password: ").map_err(CliError::io("reading the password"))?
    } else {
        return Err(CliError::Invalid(
            "no terminal to ask for the password; use --password-stdin".into(),
        ));
    };

    let http = http_client();
    let post = async |path: &str, body: Value| -> Result<Value, CliError> {
        let resp = http
            .post(format!("{url}{path}"))
            .json(&body)
            .send()
            .await
            .map_err(|e| connect_error(&url, &e))?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(api_error(status, &value, &format!("POST {path}")))
        }
    };
    let mut pair = post(
        "/api/auth/login",
        json!({ "email": email, "password": password }),
    )
    .await?;
    if pair["mfa_required"].as_bool() == Some(true) {
        let code = if interactive {
            prompt("Authenticator code: ", "MFA code")?
        } else {
            read_line("MFA code")?
        };
        pair = post(
            "/api/auth/mfa/verify",
            json!({ "mfa_token": pair["mfa_token"], "code": code.trim() }),
        )
        .await?;
    }
    let creds = Credentials::from_pair(&url, &pair)?;
    session::save(&path, &creds)?;
    println!(
        "Logged in to {url} as {} ({}). Credentials saved in {}.",
        creds.email,
        pair["user"]["role"].as_str().unwrap_or("?"),
        path.display()
    );
    Ok(())
}

pub async fn logout() -> Result<(), CliError> {
    let path = credentials_path()?;
    let Some(creds) = session::load(&path)? else {
        println!("Not logged in.");
        return Ok(());
    };
    // Ending the session on the server is best effort: the local tokens go either way.
    let ended = http_client()
        .post(format!("{}/api/auth/logout", creds.url))
        .json(&json!({ "refresh_token": creds.refresh_token }))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    std::fs::remove_file(&path).map_err(CliError::io(format!("removing {}", path.display())))?;
    if ended {
        println!("Logged out of {}.", creds.url);
    } else {
        println!(
            "Removed the saved login; {} could not be told, so its session ends when it expires.",
            creds.url
        );
    }
    Ok(())
}
