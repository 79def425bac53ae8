//! `ved lsp` spoken to as an editor would: JSON-RPC with `Content-Length` framing on
//! the child's stdin and stdout, one scripted session from `initialize` to `exit`.

mod common;

use serde_json::{json, Value};
use std::io::Write;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// Generous: the machine may be busy with other builds. Nothing here sleeps.
const DEADLINE: Duration = Duration::from_secs(120);

struct Client {
    stdin: ChildStdin,
    incoming: Receiver<Value>,
    next_id: i64,
}

impl Client {
    fn send(&mut self, msg: Value) {
        let body = msg.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    /// Sends a request and returns its response (notifications in between are skipped).
    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        loop {
            let msg = self.recv();
            if msg["id"] == json!(id) {
                return msg;
            }
        }
    }

    fn recv(&self) -> Value {
        self.incoming.recv_timeout(DEADLINE).expect("a message from the server in time")
    }

    /// The next `publishDiagnostics` for `uri`.
    fn diagnostics(&self, uri: &str) -> Vec<Value> {
        loop {
            let msg = self.recv();
            if msg["method"] == "textDocument/publishDiagnostics" && msg["params"]["uri"] == uri {
                return msg["params"]["diagnostics"].as_array().unwrap().clone();
            }
        }
    }
}

const URI: &str = "file:///tmp/pool.ved";

/// Line 5 compares the int field `workers` with a string: a type error.
const BAD: &str = "domain Pool {
  state {
    workers: int
    names: list<string>
  }
  goal workers == \"five\"
  transition grow {
    step {
      if workers < 5 {
        workers += names.length
      }
    }
  }
}
";

fn pos(line: u32, character: u32) -> Value {
    json!({ "line": line, "character": character })
}

fn labels(resp: &Value) -> Vec<String> {
    let items = resp["result"]["items"].as_array().expect("completion items");
    items.iter().map(|i| i["label"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_scripted_session() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ved"))
        .arg("lsp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ved lsp starts");
    let incoming = common::lsp_messages(child.stdout.take().unwrap());
    let mut c = Client { stdin: child.stdin.take().unwrap(), incoming, next_id: 0 };

    let init = c.request("initialize", json!({ "processId": null, "rootUri": null, "capabilities": {} }));
    let caps = &init["result"]["capabilities"];
    assert_eq!(caps["textDocumentSync"], 1, "{init}");
    assert_eq!(caps["hoverProvider"], true);
    assert_eq!(caps["definitionProvider"], true);
    assert_eq!(caps["documentFormattingProvider"], true);
    assert_eq!(caps["completionProvider"]["triggerCharacters"], json!(["."]));
    c.notify("initialized", json!({}));

    // A type error: one diagnostic on `workers == "five"`.
    c.notify(
        "textDocument/didOpen",
        json!({ "textDocument": { "uri": URI, "languageId": "ved", "version": 1, "text": BAD } }),
    );
    let diags = c.diagnostics(URI);
    assert_eq!(diags.len(), 1, "{diags:?}");
    let d = &diags[0];
    assert_eq!(d["severity"], 1);
    assert_eq!(d["range"]["start"]["line"], 5, "{d}");
    let (start, end) =
        (d["range"]["start"]["character"].as_u64().unwrap(), d["range"]["end"]["character"].as_u64().unwrap());
    let line = BAD.lines().nth(5).unwrap();
    assert!(start >= 7 && end <= line.len() as u64 && start < end, "{d}");
    let message = d["message"].as_str().unwrap();
    assert!(message.contains("int") && message.contains("string"), "{message}");

    // Fixed: the diagnostics are cleared.
    let good = BAD.replace("\"five\"", "5");
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": URI, "version": 2 }, "contentChanges": [{ "text": good }] }),
    );
    assert_eq!(c.diagnostics(URI), Vec::<Value>::new());

    let doc = json!({ "uri": URI });
    // Hover on `workers` in the goal.
    let h = c.request("textDocument/hover", json!({ "textDocument": doc, "position": pos(5, 8) }));
    let value = h["result"]["contents"]["value"].as_str().unwrap_or_default();
    assert!(value.contains("workers: int"), "{h}");
    // Hover on the member `.length`.
    let h = c.request("textDocument/hover", json!({ "textDocument": doc, "position": pos(9, 26) }));
    let value = h["result"]["contents"]["value"].as_str().unwrap_or_default();
    assert!(value.contains("length: int"), "{h}");
    // Hover on a keyword: nothing.
    let h = c.request("textDocument/hover", json!({ "textDocument": doc, "position": pos(0, 2) }));
    assert_eq!(h["result"], Value::Null, "{h}");

    // Go to definition of the `workers` assigned in the step: its declaration.
    let def = c.request("textDocument/definition", json!({ "textDocument": doc, "position": pos(9, 9) }));
    assert_eq!(def["result"]["uri"], URI);
    assert_eq!(def["result"]["range"], json!({ "start": pos(2, 4), "end": pos(2, 11) }), "{def}");

    // Completion after `names.` (the text does not parse mid-edit): list members only.
    let typing = good.replace("names.length", "names.");
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": URI, "version": 3 }, "contentChanges": [{ "text": typing }] }),
    );
    assert!(!c.diagnostics(URI).is_empty(), "an incomplete member is a syntax error");
    let comp = c.request("textDocument/completion", json!({ "textDocument": doc, "position": pos(9, 25) }));
    let members = labels(&comp);
    assert!(members.contains(&"length".to_string()) && members.contains(&"add".to_string()), "{members:?}");
    assert!(!members.contains(&"keys".to_string()), "a list has no `keys`: {members:?}");

    // Completion in an expression: the domain's fields.
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": URI, "version": 4 }, "contentChanges": [{ "text": good }] }),
    );
    c.diagnostics(URI);
    let comp = c.request("textDocument/completion", json!({ "textDocument": doc, "position": pos(8, 9) }));
    assert_eq!(labels(&comp), ["workers", "names"]);

    // Formatting an unindented copy gives `ved fmt`'s text in one edit.
    let flat: String = good.lines().map(|l| format!("{}\n", l.trim_start())).collect();
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": URI, "version": 5 }, "contentChanges": [{ "text": flat }] }),
    );
    c.diagnostics(URI);
    let f = c.request(
        "textDocument/formatting",
        json!({ "textDocument": doc, "options": { "tabSize": 2, "insertSpaces": true } }),
    );
    let edits = f["result"].as_array().expect("edits");
    assert_eq!(edits.len(), 1, "{f}");
    assert_eq!(edits[0]["newText"], ved_syntax::fmt::format(ved_syntax::FileId(0), &flat).unwrap());
    assert_eq!(edits[0]["range"]["start"], pos(0, 0));

    // A scenario file opened alone is checked after its program, read from disk.
    let examples = std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples")).unwrap();
    let test_path = examples.join("worker_pool.test.ved");
    let test_uri = format!("file://{}", test_path.display());
    let test_text = std::fs::read_to_string(&test_path).unwrap();
    c.notify(
        "textDocument/didOpen",
        json!({ "textDocument": { "uri": test_uri, "languageId": "ved", "version": 1, "text": test_text } }),
    );
    assert_eq!(c.diagnostics(&test_uri), Vec::<Value>::new(), "its domain and fields resolve");

    // Unknown requests and positions far out of range: answered, no crash.
    let r = c.request("textDocument/frobnicate", json!({}));
    assert_eq!(r["error"]["code"], -32601, "{r}");
    let r = c.request("textDocument/hover", json!({ "textDocument": doc, "position": pos(9999, 9999) }));
    assert!(r.get("result").is_some(), "{r}");
    let r = c.request(
        "textDocument/hover",
        json!({ "textDocument": { "uri": "file:///unknown.ved" }, "position": pos(0, 0) }),
    );
    assert_eq!(r["result"], Value::Null, "{r}");

    let r = c.request("shutdown", Value::Null);
    assert_eq!(r["result"], Value::Null, "{r}");
    c.notify("exit", Value::Null);
    drop(c);
    let status = child.wait().expect("ved lsp exits");
    assert!(status.success(), "{status}");
}
