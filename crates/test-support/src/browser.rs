//! A real headless Chromium for tests of web pages, driven over W3C WebDriver by `chromedriver`.
//!
//! Debian's `chromium` and `chromium-driver` packages (`scripts/ensure-tools` installs them).
//! Each [`Browser`] is a chromedriver of its own on a free port with a Chromium profile in a
//! temporary directory; dropping it ends the session (chromedriver closes Chromium) and kills
//! chromedriver, so no Chromium outlives a test, failed or not.
//!
//! **Why WebDriver over plain HTTP:** the few commands a page test needs (open a URL, find an
//! element, click, type, read text, run a line of script, take a screenshot) are each one JSON
//! request to chromedriver, so this client is [`reqwest`], which the tests already use, rather
//! than a browser-automation crate and its dependencies.

use std::{path::Path, process::Stdio, time::Duration};

use base64::Engine;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::{free_port, log_dir, wait_until};

/// The key under which WebDriver returns an element's reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _profile: tempfile::TempDir,
}

/// An element found on the current page.
#[derive(Debug, Clone)]
pub struct Element {
    url: String,
}

/// The Chromium binary: `CHROMIUM_BIN`, else Debian's (the real binary, not its shell wrapper).
fn chromium_binary() -> String {
    std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| {
        ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("chromium")
            .to_owned()
    })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a `width`×`height` window.
    /// Panics, saying what to install, when either is missing.
    pub async fn start(width: u32, height: u32) -> Self {
        let port = free_port();
        let log = log_dir().join(format!("chromedriver-{port}.log"));
        let file = std::fs::File::create(&log).expect("chromedriver log file");
        let driver = Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start chromedriver: {e} (scripts/ensure-tools installs chromium and chromium-driver)")
            });
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client");
        wait_until("chromedriver answers", Duration::from_secs(20), || async {
            let status: Value = http.get(format!("{base}/status")).send().await.ok()?.json().await.ok()?;
            status["value"]["ready"].as_bool().filter(|ready| *ready)
        })
        .await;
        let profile = tempfile::tempdir().expect("Chromium profile directory");
        let args = [
            "--headless=new".to_owned(),
            // Root (as in CI) has no sandbox; the pages under test are the project's own.
            "--no-sandbox".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-gpu".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium_binary(), "args": args},
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("POST /session")
            .json()
            .await
            .expect("WebDriver answer");
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created} (log: {})", log.display()))
            .to_owned();
        Self { driver, http, session: format!("{base}/session/{id}"), _profile: profile }
    }

    /// One WebDriver command: its `value`, or the error WebDriver gave.
    async fn command(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| format!("WebDriver: {e}"))?;
        let ok = response.status().is_success();
        let answer: Value = response.json().await.map_err(|e| format!("WebDriver answer: {e}"))?;
        if ok { Ok(answer["value"].clone()) } else { Err(format!("{}", answer["value"])) }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.session);
        self.command(reqwest::Method::POST, &url, Some(body))
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    async fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.session);
        self.command(reqwest::Method::GET, &url, None).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    pub async fn current_url(&self) -> String {
        self.get("/url").await.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the current URL is `what` says (a form's submission may still be under way
    /// when a click returns), and returns it.
    pub async fn wait_for_url(&self, what: &str, is: impl Fn(&str) -> bool) -> String {
        wait_until(&format!("the browser's URL {what}"), Duration::from_secs(10), || async {
            let url = self.current_url().await;
            is(&url).then_some(url)
        })
        .await
    }

    /// The first element that matches a CSS selector, if any.
    pub async fn try_find(&self, css: &str) -> Option<Element> {
        let url = format!("{}/element", self.session);
        let found = self
            .command(reqwest::Method::POST, &url, Some(json!({"using": "css selector", "value": css})))
            .await;
        let id = found.ok()?[ELEMENT_KEY].as_str()?.to_owned();
        Some(Element { url: format!("{}/element/{id}", self.session) })
    }

    /// The first element that matches a CSS selector; panics (with the page's URL) if none does.
    pub async fn find(&self, css: &str) -> Element {
        match self.try_find(css).await {
            Some(element) => element,
            None => panic!("no element matches {css:?} on {}", self.current_url().await),
        }
    }

    /// Clicks the element (a link or a submit button: the next page has loaded when it returns).
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command(reqwest::Method::POST, &format!("{}/click", element.url), Some(json!({})))
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types `text` into the element.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(reqwest::Method::POST, &format!("{}/value", element.url), Some(json!({"text": text})))
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// The element's visible text.
    pub async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        let text = self.command(reqwest::Method::GET, &format!("{}/text", element.url), None).await;
        text.unwrap_or_else(|e| panic!("text of {css}: {e}")).as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body; `return` gives its value) in the page.
    pub async fn execute(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []})).await
    }

    /// The text of an open `alert()`, if one is open.
    pub async fn alert_text(&self) -> Option<String> {
        let url = format!("{}/alert/text", self.session);
        self.command(reqwest::Method::GET, &url, None).await.ok().and_then(|v| v.as_str().map(str::to_owned))
    }

    /// The browser's cookies for the current page, as WebDriver describes them (`name`,
    /// `httpOnly`, `sameSite`, `path`, …).
    pub async fn cookies(&self) -> Vec<Value> {
        self.get("/cookie").await.as_array().cloned().unwrap_or_default()
    }

    pub async fn delete_cookies(&self) {
        let url = format!("{}/cookie", self.session);
        self.command(reqwest::Method::DELETE, &url, None).await.expect("delete cookies");
    }

    /// Resizes the window to `width` and the page's full height at that width, and saves a PNG
    /// of it.
    pub async fn screenshot(&self, path: &Path, width: u32) {
        self.post("/window/rect", json!({"width": width, "height": 900})).await;
        let script = "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight";
        let height = self.execute(script).await.as_u64().unwrap_or(900);
        self.post("/window/rect", json!({"width": width, "height": height.clamp(400, 4000)})).await;
        let png = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a base64 PNG"))
            .expect("valid base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, bytes).expect("write the screenshot");
    }
}

impl Browser {
    /// Ends the session (chromedriver then closes Chromium and waits for it) with a blocking
    /// `DELETE /session/{id}`: `Drop` cannot await, and a Chromium left running would outlive
    /// the test.
    fn end_session(&self) -> std::io::Result<()> {
        use std::io::{Read, Write};
        let rest = self.session.trim_start_matches("http://");
        let (address, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut stream = std::net::TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "DELETE /{path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map(|_| ())
    }
}

impl Drop for Browser {
    /// Closes Chromium, then kills chromedriver (and anything left in its process group).
    fn drop(&mut self) {
        let _ = self.end_session();
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}
