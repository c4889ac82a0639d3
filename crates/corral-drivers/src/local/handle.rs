//! The `driver_ref` of a local replica: enough to find the process again after a restart
//! of `corral serve`, and to never mistake a recycled pid for it.

use crate::{Error, Result, Runtime};

/// Decoded `driver_ref`, e.g. `pid=1234;start=5678;rt=runner;log=1764083000123456` or
/// `pid=1234;start=5678;rt=ollama;port=40123;log=1764083000123456`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handle {
    pub pid: i32,
    /// Start time of the process in clock ticks after boot (`/proc/<pid>/stat` field 22).
    /// A pid is only ours while this matches.
    pub start: u64,
    pub runtime: Runtime,
    /// The port the replica was told to listen on. None for `corral-runner`, which is
    /// started with `--port 0` (no race for a free port) and whose port is read from its
    /// listening socket.
    pub port: Option<u16>,
    /// Which log file of the replica this launch writes (its launch time in µs since
    /// the epoch): one file per launch, so the logs of an earlier run of a replica that
    /// was restarted in place stay apart. None in references made before log files were
    /// per launch, which wrote `<replica_id>.log`.
    pub log: Option<u64>,
}

impl Handle {
    pub fn encode(&self) -> String {
        let rt = match self.runtime {
            Runtime::CorralRunner => "runner",
            Runtime::Ollama => "ollama",
        };
        let mut s = format!("pid={};start={};rt={rt}", self.pid, self.start);
        if let Some(port) = self.port {
            s.push_str(&format!(";port={port}"));
        }
        if let Some(log) = self.log {
            s.push_str(&format!(";log={log}"));
        }
        s
    }

    pub fn decode(s: &str) -> Result<Self> {
        let bad =
            |why: &str| Error::Invalid(format!("not a local driver reference ({why}): {s:?}"));
        let (mut pid, mut start, mut runtime, mut port, mut log) = (None, None, None, None, None);
        for part in s.split(';') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            match key {
                "pid" => pid = Some(value.parse::<i32>().map_err(|_| bad("pid"))?),
                "start" => start = Some(value.parse::<u64>().map_err(|_| bad("start"))?),
                "rt" => {
                    runtime = Some(match value {
                        "runner" => Runtime::CorralRunner,
                        "ollama" => Runtime::Ollama,
                        _ => return Err(bad("rt")),
                    })
                }
                "port" => port = Some(value.parse::<u16>().map_err(|_| bad("port"))?),
                "log" => log = Some(value.parse::<u64>().map_err(|_| bad("log"))?),
                _ => return Err(bad("unknown key")),
            }
        }
        let pid = pid.filter(|p| *p > 0).ok_or_else(|| bad("pid"))?;
        Ok(Handle {
            pid,
            start: start.ok_or_else(|| bad("start"))?,
            runtime: runtime.ok_or_else(|| bad("rt"))?,
            port: port.filter(|p| *p != 0),
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for h in [
            Handle {
                pid: 1234,
                start: 5678,
                runtime: Runtime::CorralRunner,
                port: None,
                log: None,
            },
            Handle {
                pid: 7,
                start: 0,
                runtime: Runtime::Ollama,
                port: Some(40123),
                log: Some(1_764_083_000_123_456),
            },
        ] {
            assert_eq!(Handle::decode(&h.encode()).unwrap(), h);
        }
        assert_eq!(
            Handle::decode("pid=1;start=2;rt=ollama;port=3")
                .unwrap()
                .encode(),
            "pid=1;start=2;rt=ollama;port=3"
        );
    }

    #[test]
    fn key_order_does_not_matter() {
        let h = Handle::decode("rt=runner;start=99;pid=42").unwrap();
        assert_eq!((h.pid, h.start, h.port, h.log), (42, 99, None, None));
        let h = Handle::decode("log=7;rt=runner;start=99;pid=42").unwrap();
        assert_eq!(h.log, Some(7));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "pid=1;start=2",
            "pid=1;rt=runner",
            "start=2;rt=runner",
            "pid=0;start=2;rt=runner",
            "pid=-5;start=2;rt=runner",
            "pid=x;start=2;rt=runner",
            "pid=1;start=2;rt=docker",
            "pid=1;start=2;rt=runner;port=70000",
            "pid=1;start=2;rt=runner;extra=1",
            "pid=1;start=2;rt=runner;log=-3",
            "arn:aws:ecs:us-east-1:123:task/abc",
        ] {
            let err = Handle::decode(bad).unwrap_err().to_string();
            assert!(err.contains("not a local driver reference"), "{bad}: {err}");
        }
    }
}
