//! The document's curl, Python and JavaScript examples, run unchanged (but for the base URL
//! and key) against a real `ares serve` process.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DOC_BASE: &str = "https://api.ares.dirmacs.com";
const DOC_KEY: &str = "ares_x7k9m2p4q8r1s5t3";
const ADMIN: &str = "doc-examples-admin-token";

struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ares serve` with the shipped ares.yaml and agents.d, on an in-memory database.
async fn serve() -> Served {
    let port = free_port();
    crate::helpers::remember_secret(ADMIN);
    let log =
        std::fs::File::create(crate::helpers::log_dir().join(format!("doc-examples-{port}.log")))
            .expect("a log file");
    let child = crate::procs::dies_with_test(&mut Command::new(env!("CARGO_BIN_EXE_ares")))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("ARES_DATABASE_URL", "mem://")
        .env("ARES_ADMIN_TOKEN", ADMIN)
        .env_remove("ARES_CONFIG")
        .env_remove("ARES_AGENTS_DIR")
        .env("ARES_LOG", "info,ares=debug")
        .stdout(Stdio::from(log.try_clone().expect("a log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start ares serve");
    let served = Served {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{}/healthz", served.base)).send().await
            && r.status().is_success()
        {
            return served;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "ares serve did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn demo_key(base: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/v1/tenants"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(r#"{"slug": "demo"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let secret = body["api_key"]["secret"].as_str().unwrap().to_string();
    crate::helpers::remember_secret(&secret);
    secret
}

/// Runs an example file with `program`, with only the base URL and key replaced.
fn run_example(program: &str, file: &str, base: &str, key: &str) -> String {
    let text = std::fs::read_to_string(format!("contracts/examples/{file}")).unwrap();
    let text = text.replace(DOC_BASE, base).replace(DOC_KEY, key);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(program)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{file} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_documented_examples_work_unchanged() {
    let served = serve().await;
    let key = demo_key(&served.base).await;

    let run: serde_json::Value =
        serde_json::from_str(&run_example("bash", "run_agent.sh", &served.base, &key)).unwrap();
    assert_eq!(run["status"], "completed", "{run}");
    assert!(run["output"]["risk_level"].is_string());

    let usage: serde_json::Value =
        serde_json::from_str(&run_example("bash", "usage.sh", &served.base, &key)).unwrap();
    assert_eq!(usage["total_runs"], 1);

    let py = run_example("python3", "client.py", &served.base, &key);
    assert!(py.starts_with("Status: completed\nOutput: {"), "{py}");
    assert!(py.contains("\nRuns this month: 2 / 100000\n"), "{py}");
    assert!(
        py.contains("Explain quantum computing."),
        "the streamed answer: {py}"
    );

    let js = run_example("node", "chat_stream.mjs", &served.base, &key);
    assert!(js.contains("Explain quantum computing."), "{js}");

    // SIGTERM stops the server gracefully: it exits 0.
    let mut served = served;
    let pid = served.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ares serve did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
