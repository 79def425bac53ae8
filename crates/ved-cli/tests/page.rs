//! The live page at `/`, in a real browser: headless Chromium (Debian's `chromium`) loads
//! it, then an instance drifts and heals, and the test reads what the page shows through
//! the DevTools protocol: the instance, its status and goals, the live events of the heal,
//! the journal's causal chain and the audit entry.

mod common;

use common::{tempdir, wait_for, Daemon};
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "page-t0ken";
const LIMIT: Duration = Duration::from_secs(120);

/// A headless Chromium, killed when the test ends however it ends.
struct Browser {
    child: Child,
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempdir("page-chromium");
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                &format!("--user-data-dir={}", profile.display()),
                url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (Debian's `chromium` package; .ci/deps installs it)");
        // Chromium says where its DevTools endpoint listens on stderr.
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(ws) = l.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(ws.to_string());
                }
            }
        });
        let browser_ws = rx.recv_timeout(LIMIT).expect("chromium's DevTools address");
        let host = browser_ws.trim_start_matches("ws://").split('/').next().unwrap().to_string();
        // The page target of the URL on the command line.
        let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(LIMIT)).build().into();
        let mut page_ws = None;
        wait_for("chromium's page target", LIMIT, || {
            let list: Json = agent
                .get(&format!("http://{host}/json/list"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            page_ws = list.as_array().into_iter().flatten().find_map(|t| {
                (t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url)))
                    .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
                    .flatten()
            });
            page_ws.is_some()
        });
        let (socket, _) = tungstenite::connect(page_ws.unwrap()).expect("the page's DevTools socket");
        Browser { child, socket, next_id: 0 }
    }

    /// Evaluates `expr` in the page and returns its value.
    fn eval(&mut self, expr: &str) -> Json {
        self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true}))["result"]["value"].clone()
    }

    /// A DevTools call; its `result`.
    fn call(&mut self, method: &str, params: Json) -> Json {
        self.next_id += 1;
        let id = self.next_id;
        let call = json!({"id": id, "method": method, "params": params});
        self.socket.send(tungstenite::Message::text(call.to_string())).unwrap();
        loop {
            let msg = self.socket.read().unwrap();
            let Ok(text) = msg.to_text() else { continue };
            let v: Json = serde_json::from_str(text).unwrap_or_default();
            if v["id"] == id {
                return v["result"].clone();
            }
        }
    }

    fn text_of(&mut self, selector: &str) -> String {
        let js = format!("(document.querySelector({selector:?}) || {{innerText: ''}}).innerText");
        self.eval(&js).as_str().unwrap_or_default().to_string()
    }
}

#[test]
fn the_page_shows_an_instance_drift_and_heal_as_it_happens() {
    let dir = tempdir("page");
    let d = Daemon::start(&["examples/worker_pool.ved", "--data-dir", dir.join("data").to_str().unwrap()], Some(TOKEN));
    wait_for("the pool to boot", LIMIT, || d.get("/v1/instances/WorkerPool").1["status"] == "stable");
    let page = format!("{}/", d.base);
    // The page is served, as HTML, by the daemon itself.
    let mut r = d.agent.get(&page).call().unwrap();
    assert!(r.headers().get("content-type").unwrap().to_str().unwrap().starts_with("text/html"));
    assert!(r.body_mut().read_to_string().unwrap().contains("<title>Ved</title>"));

    let mut b = Browser::open(&page);
    wait_for("the page to load the instances and follow the events", LIMIT, || {
        b.eval("document.body.dataset.live") == "yes"
            && b.eval("(document.querySelector('#instances tr[data-instance=\"WorkerPool\"] [data-status]') || {dataset: {}}).dataset.status") == "stable"
    });
    let row = b.text_of("#instances tr[data-instance=\"WorkerPool\"]");
    assert!(
        row.contains("WorkerPool") && row.contains("stable") && row.contains("holds") && row.contains("none"),
        "{row}"
    );

    // The drift: the pool lost two workers. Ved heals it while the page is open.
    let (s, body) = d.post("/v1/instances/WorkerPool/observations", Some(TOKEN), br#"{"workers": 3}"#);
    assert_eq!(s, 200, "{body}");
    let healed = d.get("/v1/instances/WorkerPool").1["slice"].as_u64().unwrap();
    assert_eq!(healed, 8, "boot 5, the drift, two corrections");
    wait_for("the page to show the heal", LIMIT, || {
        let events = b.text_of("#events");
        let journal = b.text_of("#journal");
        let audit = b.text_of("#audit");
        let row = b.text_of("#instances tr[data-instance=\"WorkerPool\"]");
        events.contains("slice 6 (observe): workers = 3")
            && events.contains("WorkerPool stable")
            && row.ends_with("\t8")
            && journal.contains("slice 6")
            && journal.contains("[observe from api] workers = 3")
            && journal.contains("workers = 5 \u{21d2} stable")
            && audit.contains("drifted to 3")
    });
    // The live list shows the chain in order, newest first: stable, the corrections, the drift.
    let events = b.text_of("#events");
    let at = |s: &str| events.find(s).unwrap_or_else(|| panic!("`{s}` not in:\n{events}"));
    assert!(
        at("WorkerPool stable") < at("slice 8") && at("slice 8") < at("slice 7") && at("slice 7") < at("slice 6"),
        "{events}"
    );
    let row = b.text_of("#instances tr[data-instance=\"WorkerPool\"]");
    assert!(row.contains("stable") && row.contains("holds"), "{row}");
    // The journal reads as a causal chain: the observation, then the transitions it caused.
    let follows: Json = b.eval("[...document.querySelectorAll('#journal li.follows')].map(li => li.innerText)");
    assert!(follows.as_array().unwrap().iter().any(|t| t.as_str().unwrap().starts_with("slice 8")), "{follows}");

    // `VED_PAGE_SCREENSHOT=FILE` saves what the page shows now (the README's picture).
    if let Ok(path) = std::env::var("VED_PAGE_SCREENSHOT") {
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 860, "deviceScaleFactor": 1, "mobile": false}),
        );
        let shot = b.call("Page.captureScreenshot", json!({"format": "png"}));
        use base64::Engine as _;
        let png =
            base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().expect("a screenshot")).unwrap();
        std::fs::write(&path, png).unwrap();
    }
}
