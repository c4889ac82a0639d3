//! `corral deploy`, `ps`, `logs`, `stop`, `start` and `rm`.

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, Local, Utc};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::output::{self, Spinner};
use super::session::{Api, api_error, connect_error};
use super::{DeployArgs, LogsArgs, StopArgs};
use crate::error::CliError;

/// How often progress is polled: quick enough that a 2-second deploy shows its steps.
const POLL: Duration = Duration::from_millis(250);

/// A full instance id, from one or a unique prefix of one the caller can see.
pub async fn resolve(api: &mut Api, raw: &str) -> Result<String, CliError> {
    let raw = raw.trim().to_ascii_lowercase();
    if uuid::Uuid::parse_str(&raw).is_ok() {
        return Ok(raw);
    }
    if raw.len() < 4 {
        return Err(CliError::Invalid(format!(
            "{raw:?} is too short for an instance id; `corral ps` lists them"
        )));
    }
    let list = api.get("/api/instances").await?;
    let matches: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["id"].as_str())
        .filter(|id| id.starts_with(&raw))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(CliError::Invalid(format!(
            "no instance of yours starts with {raw:?}; `corral ps` lists them"
        ))),
        many => Err(CliError::Invalid(format!(
            "{raw:?} matches {} instances; give more of the id",
            many.len()
        ))),
    }
}

fn compute(c: &Value) -> String {
    let kind = c["compute_type"].as_str().unwrap_or("?");
    let mut s = match c["instance_type"].as_str() {
        Some(t) => format!("{kind} {t}"),
        None => format!(
            "{kind} {} vCPU {}",
            c["cpu"],
            output::mib(c["memory"].as_u64().unwrap_or(0))
        ),
    };
    if c["spot"].as_bool() == Some(true) {
        s.push_str(" spot");
    }
    s
}

fn age(at: &Value) -> String {
    at.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map_or_else(
            || "?".into(),
            |t| output::duration((Utc::now() - t.with_timezone(&Utc)).num_seconds()),
        )
}

fn status(inst: &Value) -> String {
    let status = inst["status"].as_str().unwrap_or("?");
    match inst["desired"].as_str() {
        Some("deleted") => format!("{status} (deleting)"),
        Some("stopped") if status != "stopped" && status != "failed" => {
            format!("{status} (stopping)")
        }
        _ => status.to_string(),
    }
}

pub async fn ps() -> Result<(), CliError> {
    let mut api = Api::from_env()?;
    let list = api.get("/api/instances").await?;
    let list = list.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("No instances. Deploy one with: corral deploy smollm2:135m");
        return Ok(());
    }
    let owners = list.iter().any(|i| i["owner_email"].is_string());
    let mut header = vec![
        "ID", "MODEL", "STATUS", "REPLICAS", "COMPUTE", "UPTIME", "CREATED",
    ];
    if owners {
        header.push("OWNER");
    }
    header.push("NOTE");
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            let s = &i["settings"];
            let mut row = vec![
                i["id"].as_str().unwrap_or("?").to_string(),
                i["model_id"].as_str().unwrap_or("?").to_string(),
                status(i),
                format!(
                    "{} ({}..{})",
                    i["target_replicas"], s["min_replicas"], s["max_replicas"]
                ),
                compute(&i["compute"]),
                match i["uptime_seconds"].as_i64() {
                    Some(0) | None => "-".into(),
                    Some(secs) => output::duration(secs),
                },
                format!("{} ago", age(&i["created_at"])),
            ];
            if owners {
                row.push(i["owner_email"].as_str().unwrap_or("").to_string());
            }
            let note: String = i["status_reason"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect();
            row.push(note);
            row
        })
        .collect();
    output::table(&header, &rows);
    Ok(())
}

pub async fn deploy(args: DeployArgs) -> Result<(), CliError> {
    let mut api = Api::from_env()?;
    let mut body = Map::new();
    body.insert("model_id".into(), json!(args.model));
    let optional = [
        ("compute_type", args.compute.map(Value::from)),
        ("cpu", args.cpu.map(Value::from)),
        ("memory", args.memory.map(Value::from)),
        ("gpu_count", args.gpus.map(Value::from)),
        ("instance_type", args.instance_type.map(Value::from)),
        ("idle_timeout_seconds", args.idle.map(Value::from)),
        ("min_replicas", args.replicas.map(|r| Value::from(r.0))),
        ("max_replicas", args.replicas.map(|r| Value::from(r.1))),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            body.insert(key.into(), v);
        }
    }
    if args.spot {
        body.insert("spot".into(), json!(true));
    }
    if args.no_wake {
        body.insert("wake_on_request".into(), json!(false));
    }
    let started = Instant::now();
    let inst = api
        .json(Method::POST, "/api/models/start", Some(Value::Object(body)))
        .await?;
    let id = inst["id"].as_str().unwrap_or("?").to_string();
    println!(
        "Deploying {} as {id} ({})",
        inst["model_id"].as_str().unwrap_or("?"),
        compute(&inst["compute"])
    );
    if args.detach {
        println!("Follow it with: corral ps   (or corral logs -f {id})");
        return Ok(());
    }
    wait_ready(&mut api, &id, started).await
}

/// Shows the timeline as it grows and a spinner, until the instance is ready (prints
/// how to use it) or fails (an error with the reason).
async fn wait_ready(api: &mut Api, id: &str, started: Instant) -> Result<(), CliError> {
    let mut spinner = Spinner::new();
    let mut seen: HashSet<i64> = HashSet::new();
    let mut expected = None;
    loop {
        let inst = api.get(&format!("/api/instances/{id}")).await?;
        for event in inst["timeline"].as_array().into_iter().flatten() {
            if let Some(eid) = event["id"].as_i64()
                && seen.insert(eid)
            {
                let at = event["at"]
                    .as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.with_timezone(&Local).format("%H:%M:%S").to_string())
                    .unwrap_or_default();
                spinner.println(&format!(
                    "  {at}  {}",
                    event["message"].as_str().unwrap_or("")
                ));
            }
        }
        let status = inst["status"].as_str().unwrap_or("?");
        match status {
            "ready" | "scaling" => {
                spinner.clear();
                let endpoint = inst["endpoint"].as_str().unwrap_or("?");
                println!(
                    "Ready in {:.1} s.\n\n  endpoint  {endpoint}   (Ollama API; OpenAI API at {endpoint}/v1)\n  chat      corral chat {id}\n  logs      corral logs -f {id}\n  stop      corral stop {id}\n\nCall it with an API key: curl {endpoint}/api/generate -H \"Authorization: Bearer $CORRAL_API_KEY\" -d '{{\"model\":\"{}\",\"prompt\":\"Hello\"}}'",
                    started.elapsed().as_secs_f64(),
                    inst["model_id"].as_str().unwrap_or("?")
                );
                return Ok(());
            }
            "failed" => {
                return Err(CliError::Invalid(format!(
                    "the instance failed: {}\n  hint: `corral logs {id}` may say more; \
                     `corral start {id}` retries it",
                    inst["status_reason"].as_str().unwrap_or("no reason given")
                )));
            }
            _ if matches!(inst["desired"].as_str(), Some("stopped" | "deleted")) => {
                return Err(CliError::Invalid(format!(
                    "the instance was {} before it became ready",
                    inst["desired"].as_str().unwrap_or("stopped")
                )));
            }
            _ => {}
        }
        let model = inst["model_id"].as_str().unwrap_or("").to_string();
        if expected.is_none() {
            expected = Some(
                api.get(&format!("/api/models/{model}"))
                    .await
                    .ok()
                    .and_then(|m| m["expected_deploy_seconds"].as_i64())
                    .unwrap_or(0),
            );
        }
        let mut line = format!(
            "{status}  {}",
            output::duration(started.elapsed().as_secs() as i64)
        );
        if let Some(secs) = expected.filter(|s| *s > 0) {
            line.push_str(&format!(" (usually ~{})", output::duration(secs)));
        }
        // Provisioning is where weights download: show how far.
        if status == "provisioning"
            && let Ok(m) = api.get(&format!("/api/models/{model}")).await
            && let Some(pct) = m["pull"]["percent"].as_u64()
        {
            line.push_str(&format!("  weights {pct}%"));
        }
        spinner.tick(&line);
        tokio::time::sleep(POLL).await;
    }
}

pub async fn stop(args: StopArgs) -> Result<(), CliError> {
    let mut api = Api::from_env()?;
    let id = resolve(&mut api, &args.id).await?;
    api.json(Method::DELETE, &format!("/api/models/{id}/stop"), None)
        .await?;
    if args.no_wait {
        println!("Stopping {id}.");
        return Ok(());
    }
    let started = Instant::now();
    let mut spinner = Spinner::new();
    loop {
        let inst = api.get(&format!("/api/instances/{id}")).await?;
        let status = inst["status"].as_str().unwrap_or("?");
        if matches!(status, "stopped" | "failed") {
            spinner.clear();
            println!(
                "Stopped {id} in {:.1} s. Start it again with: corral start {id}",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        spinner.tick(status);
        tokio::time::sleep(POLL).await;
    }
}

pub async fn start(raw: &str) -> Result<(), CliError> {
    let mut api = Api::from_env()?;
    let id = resolve(&mut api, raw).await?;
    let started = Instant::now();
    api.json(Method::POST, &format!("/api/instances/{id}/start"), None)
        .await?;
    println!("Starting {id}");
    wait_ready(&mut api, &id, started).await
}

pub async fn remove(raw: &str) -> Result<(), CliError> {
    let mut api = Api::from_env()?;
    let id = resolve(&mut api, raw).await?;
    api.json(Method::DELETE, &format!("/api/instances/{id}"), None)
        .await?;
    println!("Deleting {id}: it stops, then disappears from `corral ps`.");
    Ok(())
}

/// `[abcdef] ` before a line when the instance may have several replicas.
fn print_line(line: &Value, prefix: bool) {
    let text = line["line"].as_str().unwrap_or("");
    if prefix {
        let replica = line["replica_id"].as_str().unwrap_or("");
        let short = &replica[replica.len().saturating_sub(6)..];
        println!("[{short}] {text}");
    } else {
        println!("{text}");
    }
}

pub async fn logs(args: LogsArgs) -> Result<(), CliError> {
    let mut api = Api::from_env()?;
    let id = resolve(&mut api, &args.id).await?;
    let inst = api.get(&format!("/api/instances/{id}")).await?;
    let prefix = inst["settings"]["max_replicas"].as_u64().unwrap_or(1) > 1
        || inst["replicas"].as_array().is_some_and(|r| r.len() > 1);
    let path = format!("/api/instances/{id}/logs?tail={}", args.tail);
    if !args.follow {
        let page = api.get(&path).await?;
        let lines = page["lines"].as_array().cloned().unwrap_or_default();
        if lines.is_empty() {
            eprintln!(
                "No log lines: the instance is {} and has no replica writing logs.",
                inst["status"].as_str().unwrap_or("?")
            );
        }
        for line in &lines {
            print_line(line, prefix);
        }
        return Ok(());
    }
    let url = api.url.clone();
    let mut resp = api
        .send(|http, base| {
            http.get(format!("{base}{path}&follow=true"))
                .header("accept", "text/event-stream")
        })
        .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        return Err(api_error(status, &body, "GET logs"));
    }
    // Server-Sent Events: blocks separated by a blank line; `data:` holds one line's
    // JSON, `event: end` closes, `:` lines are keep-alives.
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| connect_error(&url, &e))? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for field in block.lines() {
                if let Some(v) = field.strip_prefix("event:") {
                    event = if v.trim() == "end" { "end" } else { "message" };
                } else if let Some(v) = field.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if event == "end" {
                eprintln!("-- the instance was deleted");
                return Ok(());
            }
            if let Ok(line) = serde_json::from_str::<Value>(&data) {
                print_line(&line, prefix);
                let _ = std::io::stdout().flush();
            }
        }
    }
    Ok(())
}
