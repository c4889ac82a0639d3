//! `corral chat`: a conversation with one instance through the gateway's
//! `/i/{id}/api/chat` (Ollama's chat API), printing tokens as they stream in.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Instant;

use serde_json::{Value, json};

use super::ChatArgs;
use super::instances::resolve;
use super::session::{Api, connect_error};
use crate::error::CliError;

pub async fn chat(args: ChatArgs) -> Result<(), CliError> {
    let mut api = Api::from_env()?;
    let id = resolve(&mut api, &args.id).await?;
    let inst = api.get(&format!("/api/instances/{id}")).await?;
    let model = inst["model_id"].as_str().unwrap_or_default().to_string();
    let mut history: Vec<Value> = Vec::new();
    if let Some(system) = &args.system {
        history.push(json!({ "role": "system", "content": system }));
    }
    if let Some(prompt) = args.prompt {
        history.push(json!({ "role": "user", "content": prompt }));
        ask(&mut api, &id, &model, &history, false).await?;
        return Ok(());
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        let status = inst["status"].as_str().unwrap_or("?");
        let note = match status {
            "ready" | "scaling" => String::new(),
            "sleeping" => " (sleeping: the first message wakes it)".into(),
            other => format!(" (it is {other}; messages wait for it to be ready)"),
        };
        eprintln!("Chatting with {model} on {id}{note}. /reset clears, /exit or Ctrl-D quits.");
    }
    let system_messages = history.len();
    let stdin = std::io::stdin();
    loop {
        if interactive {
            eprint!("\n› ");
            let _ = std::io::stderr().flush();
        }
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(CliError::io("reading your message"))?
            == 0
        {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.truncate(system_messages);
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(json!({ "role": "user", "content": line }));
        match ask(&mut api, &id, &model, &history, interactive).await {
            Ok(answer) => history.push(json!({ "role": "assistant", "content": answer })),
            // One failed turn (a timeout, a rate limit) need not end the conversation.
            Err(e) if interactive => {
                history.pop();
                eprintln!("error: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends the conversation, prints the answer as it streams, returns it whole.
async fn ask(
    api: &mut Api,
    id: &str,
    model: &str,
    history: &[Value],
    stats: bool,
) -> Result<String, CliError> {
    let body = json!({ "model": model, "messages": history, "stream": true });
    let url = api.url.clone();
    let started = Instant::now();
    let mut resp = api
        .send(|http, base| http.post(format!("{base}/i/{id}/api/chat")).json(&body))
        .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = value["error"]["message"]
            .as_str()
            .or(value["error"].as_str())
            .map_or_else(|| text.clone(), str::to_string);
        return Err(CliError::Invalid(format!(
            "the gateway answered {status}: {message}"
        )));
    }
    let mut answer = String::new();
    let mut buf = Vec::new();
    let mut out = std::io::stdout();
    let mut last = Value::Null;
    while let Some(chunk) = resp.chunk().await.map_err(|e| connect_error(&url, &e))? {
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let Ok(value) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if let Some(err) = value["error"].as_str() {
                return Err(CliError::Invalid(format!("the model server failed: {err}")));
            }
            if let Some(piece) = value["message"]["content"].as_str() {
                answer.push_str(piece);
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
            if value["done"].as_bool() == Some(true) {
                last = value;
            }
        }
    }
    println!();
    if stats && let Some(tokens) = last["eval_count"].as_u64() {
        eprintln!(
            "({tokens} tokens in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(answer)
}
