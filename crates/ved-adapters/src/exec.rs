//! The `exec` driver and watcher: external commands speaking JSON.
//!
//! Driver: for each intent, run the command with the intent as JSON on stdin.
//! Exit status 0 is success; anything else is a failure whose stderr (its first
//! 4 KiB) is the reason. A command that outlives its timeout is killed.
//!
//! Watcher: either a long-running command that prints one JSON object (field to
//! value) per line, or, with `interval_ms`, a command run periodically whose
//! output is one such object.

use crate::{Driver, Inbound, IntentRequest, Observation, Watcher};
use serde_json::{Map, Value as Json};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

const STDERR_KEPT_BYTES: usize = 4096;

pub struct ExecDriver {
    pub command: Vec<String>,
    pub timeout: Duration,
}

/// Runs `command` with `input` on stdin; returns stdout, or why it failed.
pub fn run_command(command: &[String], input: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    let (prog, args) = command.split_first().ok_or("the command is empty")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{prog}`: {e}"))?;
    // Feed stdin and drain the pipes on threads, so a chatty command cannot deadlock us.
    let mut stdin = child.stdin.take();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&input);
        }
    });
    let mut out = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut buf);
        }
        buf
    });
    let mut err = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.take(STDERR_KEPT_BYTES as u64).read_to_end(&mut buf);
            let _ = std::io::copy(e, &mut std::io::sink());
        }
        buf
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{prog}` timed out after {} ms and was killed", timeout.as_millis()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("waiting for `{prog}`: {e}")),
        }
    };
    let _ = feeder.join();
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        let code = status.code().map(|c| format!("exit status {c}")).unwrap_or_else(|| "killed by a signal".into());
        let text = String::from_utf8_lossy(&stderr).trim().to_string();
        Err(if text.is_empty() {
            format!("`{prog}` failed: {code}")
        } else {
            format!("`{prog}` failed: {code}: {text}")
        })
    }
}

impl Driver for ExecDriver {
    fn deliver(&self, intent: &IntentRequest) -> Result<(), String> {
        let input = serde_json::to_vec(&intent.to_json()).map_err(|e| e.to_string())?;
        run_command(&self.command, &input, self.timeout).map(|_| ())
    }
}

pub struct ExecWatcher {
    pub instance: String,
    pub command: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Duration,
    pub source: String,
}

fn parse_object(text: &str) -> Option<Map<String, Json>> {
    match serde_json::from_str::<Json>(text.trim()) {
        Ok(Json::Object(m)) => Some(m),
        _ => None,
    }
}

impl Watcher for ExecWatcher {
    fn run(self: Box<Self>, sink: Sender<Inbound>, stop: Arc<AtomicBool>, resync: Option<Duration>) {
        // A periodic command reports a reading when it differs from the last one sent, or when
        // a resync is due; a long-running one reports as it sees fit.
        let mut version = 0u64;
        let mut send = |fields: Map<String, Json>| {
            version += 1;
            sink.send(Inbound::Observed(Observation {
                instance: self.instance.clone(),
                fields,
                source: self.source.clone(),
                version: Some(version),
            }))
            .is_ok()
        };
        match self.interval {
            Some(every) => {
                let mut reporter = crate::Reporter::new(&self.instance, &self.source, resync);
                while !stop.load(Ordering::Relaxed) {
                    match run_command(&self.command, b"", self.timeout) {
                        Ok(out) => match parse_object(&String::from_utf8_lossy(&out)) {
                            Some(m) => {
                                if reporter.offer(m, &sink).is_err() {
                                    return;
                                }
                            }
                            None => eprintln!(
                                "warning: {}: the command did not print a JSON object of field to value",
                                self.source
                            ),
                        },
                        Err(e) => eprintln!("warning: {}: {e}", self.source),
                    }
                    let until = Instant::now() + every;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10).min(every));
                    }
                }
            }
            None => {
                let Some((prog, args)) = self.command.split_first() else { return };
                let Ok(mut child) = Command::new(prog).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()
                else {
                    return;
                };
                let Some(out) = child.stdout.take() else { return };
                let stopper = stop.clone();
                let pid = child.id();
                // A watcher thread blocked on a read is released by ending its command.
                std::thread::spawn(move || {
                    while !stopper.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let _ = Command::new("kill").arg(pid.to_string()).status();
                });
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    match parse_object(&line) {
                        Some(m) => {
                            if !send(m) {
                                break;
                            }
                        }
                        None if line.trim().is_empty() => {}
                        None => eprintln!("warning: {}: not a JSON object of field to value: {line}", self.source),
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
