//! `ares test` run as a process on agents folders of its own: passing and failing cases, their
//! places in the tests file, cassettes recorded and replayed (with no connection), JUnit XML,
//! and `ares validate` on tests files.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Settings with one offline model, `m`.
const OFFLINE: &str =
    "providers:\n  offline: {kind: offline}\nmodels:\n  m: {provider: offline, id: m}\n";

const ECHO: &str = "\
agent_type: assistant
model: m
system_prompt: Answer in one sentence.
max_tokens: 200
";

const TRIAGE: &str = "\
agent_type: classifier
model: m
system_prompt: Classify the ticket.
output_schema:
  type: object
  required: [category, summary]
  properties:
    category: {type: string, enum: [billing, technical]}
    summary: {type: string, minLength: 1}
";

const ECHO_TESTS: &str = "\
cases:
  - name: greets
    input: {message: hello there}
    expect:
      status: completed
      values:
        - {pointer: /response, contains: hello there}
      max_tokens: 1000
  - name: repeats
    input: {message: again}
    repeat: 3
    expect:
      values:
        - {pointer: /response, matches: '\"again\"$'}
";

const TRIAGE_TESTS: &str = "\
cases:
  - name: billing
    input: {message: I was charged twice}
    expect:
      values:
        - {pointer: /category, one_of: [billing, technical]}
        - {pointer: /summary, matches: '\\S'}
";

/// A folder with `ares.yaml` (`settings`) and `agents.d` holding `files` (path, text).
fn project(settings: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ares.yaml"), settings).unwrap();
    for (path, text) in files {
        let path = dir.path().join("agents.d").join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// The example project: `acme/echo` and `_global/triage`, with their tests.
fn example() -> tempfile::TempDir {
    project(
        OFFLINE,
        &[
            ("acme/echo.yaml", ECHO),
            ("acme/echo.tests.yaml", ECHO_TESTS),
            ("_global/triage.yaml", TRIAGE),
            ("_global/triage.tests.yaml", TRIAGE_TESTS),
        ],
    )
}

/// Runs `ares` in `dir` with its `ares.yaml`: exit code, stdout, stderr.
fn ares(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ares"))
        .current_dir(dir)
        .arg("--config")
        .arg("ares.yaml")
        .args(args)
        .env_remove("ARES_CONFIG")
        .env_remove("ARES_AGENTS_DIR")
        .env_remove("ARES_DATABASE_URL")
        .env_remove("ARES_LOG")
        .output()
        .expect("run ares");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn read(dir: &Path, path: &str) -> String {
    std::fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn passing_cases_pass_and_exit_0() {
    let dir = example();
    let (code, stdout, stderr) = ares(dir.path(), &["test"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .take(3)
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows[0][..3],
        ["_global/triage", "billing", "pass"],
        "{stdout}"
    );
    assert_eq!(rows[1][..3], ["acme/echo", "greets", "pass"], "{stdout}");
    assert_eq!(
        rows[2][..3],
        ["acme/echo", "repeats", "pass 3/3"],
        "{stdout}"
    );
    assert!(
        rows.iter().all(|r| r[3].parse::<u64>().unwrap() > 0),
        "tokens of every case: {stdout}"
    );
    assert!(
        stdout.contains("3 cases: 3 passed, 0 failed (5 runs,"),
        "{stdout}"
    );
    // Only one agent's tests.
    let (code, stdout, _) = ares(dir.path(), &["test", "--agent", "triage"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("1 cases: 1 passed"), "{stdout}");
    let (code, stdout, _) = ares(dir.path(), &["test", "--agent", "nobody"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("no tests of agent `nobody`"), "{stdout}");
}

#[test]
fn a_broken_expectation_exits_1_naming_its_place() {
    let tests = ECHO_TESTS.replace("contains: hello there}", "contains: goodbye}");
    let dir = project(
        OFFLINE,
        &[("acme/echo.yaml", ECHO), ("acme/echo.tests.yaml", &tests)],
    );
    let (code, stdout, stderr) = ares(dir.path(), &["test"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("acme/echo") && l.contains("greets") && l.contains("FAIL")),
        "{stdout}"
    );
    // Line 7, column 11: the entry `{pointer: /response, contains: goodbye}`.
    assert!(
        stdout.contains(
            "agents.d/acme/echo.tests.yaml:7:11: /cases/0/expect/values/0: case `greets`: /response is \""
        ) && stdout.contains("which does not contain \"goodbye\""),
        "{stdout}"
    );
    assert!(stdout.contains("2 cases: 1 passed, 1 failed"), "{stdout}");

    // A status the run does not end with, at its own line.
    let tests = ECHO_TESTS.replace("status: completed", "status: failed");
    std::fs::write(dir.path().join("agents.d/acme/echo.tests.yaml"), tests).unwrap();
    let (code, stdout, _) = ares(dir.path(), &["test"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(
            "agents.d/acme/echo.tests.yaml:5:15: /cases/0/expect/status: case `greets`: expected status failed, got completed"
        ),
        "{stdout}"
    );
}

#[test]
fn record_then_replay_round_trips() {
    let dir = example();
    let (code, stdout, stderr) = ares(dir.path(), &["test", "--record"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("recorded agents.d/acme/echo.cassette.json"),
        "{stderr}"
    );
    let text = read(dir.path(), "agents.d/acme/echo.cassette.json");
    let cassette: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(cassette["agent"], "echo");
    let cases = cassette["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[1]["name"], "repeats");
    assert_eq!(
        cases[1]["runs"].as_array().unwrap().len(),
        3,
        "a run per repeat"
    );
    let exchange = &cases[0]["runs"][0]["exchanges"][0];
    assert_eq!(exchange["request"]["model"], "m");
    assert_eq!(
        exchange["request"]["messages"][0],
        serde_json::json!({"role": "system", "content": "Answer in one sentence."})
    );
    assert!(
        exchange["response"]["answer"]["content"]
            .as_str()
            .unwrap()
            .contains("hello there")
    );
    assert!(text.contains("\n  \"cases\": ["), "pretty JSON: {text}");

    let (code, replayed, stderr) = ares(dir.path(), &["test", "--replay"]);
    assert_eq!(code, 0, "{replayed}\n{stderr}");
    let results = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(
        results(&replayed),
        results(&stdout),
        "replayed tokens and results equal the recorded ones"
    );

    // Recording again writes the same bytes: the cassette is stable for review.
    ares(dir.path(), &["test", "--record"]);
    assert_eq!(read(dir.path(), "agents.d/acme/echo.cassette.json"), text);

    // A case without a recording fails, naming it.
    std::fs::remove_file(dir.path().join("agents.d/_global/triage.cassette.json")).unwrap();
    let (code, stdout, _) = ares(dir.path(), &["test", "--replay"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("agents.d/_global/triage.tests.yaml:2:5: /cases/0: case `billing`: cannot read the cassette agents.d/_global/triage.cassette.json"),
        "{stdout}"
    );
}

#[test]
fn replay_of_a_changed_prompt_fails_naming_the_case() {
    let dir = example();
    let (code, stdout, _) = ares(dir.path(), &["test", "--record"]);
    assert_eq!(code, 0, "{stdout}");
    let changed = ECHO.replace("Answer in one sentence.", "Answer in two sentences.");
    std::fs::write(dir.path().join("agents.d/acme/echo.yaml"), changed).unwrap();
    let (code, stdout, stderr) = ares(dir.path(), &["test", "--replay"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "agents.d/acme/echo.tests.yaml:2:5: /cases/0: case `greets`: model call 1 of the run is not in the cassette: it differs from recorded call 1 at /messages/0/content: recorded \"Answer in one sentence.\", now \"Answer in two sentences.\""
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "case `repeats` (run 3 of 3): model call 1 of the run is not in the cassette"
        ),
        "{stdout}"
    );
    // The other agent's cassette still answers.
    assert!(stdout.contains("3 cases: 1 passed, 2 failed"), "{stdout}");
}

/// An OpenAI-compatible server on 127.0.0.1 that counts the connections it accepts and
/// answers every request with one fixed completion.
fn counting_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = serde_json::json!({
                        "id": "x", "object": "chat.completion", "model": "m",
                        "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "hello there from upstream"}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
                    })
                    .to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, connections)
}

#[test]
fn replay_opens_no_connection() {
    let dir = project(
        OFFLINE,
        &[
            ("acme/echo.yaml", ECHO),
            (
                "acme/echo.tests.yaml",
                "cases:\n  - name: greets\n    input: {message: hello there}\n    expect:\n      values:\n        - {pointer: /response, contains: hello there}\n",
            ),
        ],
    );
    let (code, stdout, _) = ares(dir.path(), &["test", "--record"]);
    assert_eq!(code, 0, "{stdout}");
    // The same model now served by a network provider.
    let (url, connections) = counting_upstream();
    std::fs::write(
        dir.path().join("ares.yaml"),
        format!(
            "providers:\n  net: {{kind: openai, base_url: \"{url}\", api_key_env: ARES_TEST_UNSET_KEY}}\nmodels:\n  m: {{provider: net, id: m}}\n"
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = ares(dir.path(), &["test", "--replay"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "replay connected to the provider"
    );
    // Live, the same settings do reach it: the count above would have seen a connection.
    let (code, stdout, stderr) = ares(dir.path(), &["test"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(connections.load(Ordering::SeqCst) >= 1);
}

/// An element's name and its attributes, in order.
type Element = (String, Vec<(String, String)>);

/// A small XML well-formedness check: one root, every tag closed in order, quoted attributes,
/// only the five predefined entities (or character references) after `&`, no `<` in text.
fn well_formed(xml: &str) -> Result<Vec<Element>, String> {
    fn entity(s: &str) -> Result<usize, String> {
        let end = s.find(';').ok_or("`&` without `;`")?;
        let name = &s[1..end];
        let ok = ["amp", "lt", "gt", "quot", "apos"].contains(&name)
            || name
                .strip_prefix("#x")
                .is_some_and(|h| u32::from_str_radix(h, 16).is_ok())
            || name
                .strip_prefix('#')
                .is_some_and(|d| d.parse::<u32>().is_ok());
        if ok {
            Ok(end + 1)
        } else {
            Err(format!("unknown entity &{name};"))
        }
    }
    fn text(s: &str) -> Result<(), String> {
        let mut i = 0;
        while let Some(at) = s[i..].find('&') {
            i += at + entity(&s[i + at..])?;
        }
        if s.contains('<') {
            return Err(format!("`<` in text: {s}"));
        }
        Ok(())
    }
    let rest = xml
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
        .ok_or("no XML declaration")?;
    let mut stack: Vec<String> = Vec::new();
    let mut elements = Vec::new();
    let mut roots = 0;
    let mut s = rest;
    while !s.is_empty() {
        let lt = s.find('<').unwrap_or(s.len());
        let between = &s[..lt];
        if stack.is_empty() && !between.trim().is_empty() {
            return Err(format!("text outside the root: {between}"));
        }
        text(between)?;
        s = &s[lt..];
        if s.is_empty() {
            break;
        }
        let gt = s.find('>').ok_or("unclosed tag")?;
        let tag = &s[1..gt];
        s = &s[gt + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
            if open != name {
                return Err(format!("<{open}> closed by </{name}>"));
            }
            continue;
        }
        let empty = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let (name, mut attrs) = tag.split_once(' ').unwrap_or((tag, ""));
        if stack.is_empty() {
            roots += 1;
        }
        let mut parsed = Vec::new();
        loop {
            attrs = attrs.trim_start();
            if attrs.is_empty() {
                break;
            }
            let eq = attrs
                .find("=\"")
                .ok_or(format!("unquoted attribute in <{name}>"))?;
            let key = attrs[..eq].to_string();
            let after = &attrs[eq + 2..];
            let close = after.find('"').ok_or("unterminated attribute")?;
            text(&after[..close])?;
            if parsed.iter().any(|(k, _)| *k == key) {
                return Err(format!("attribute {key} twice"));
            }
            parsed.push((key, after[..close].to_string()));
            attrs = &after[close + 1..];
        }
        elements.push((name.to_string(), parsed));
        if !empty {
            stack.push(name.to_string());
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed: {stack:?}"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(elements)
}

#[test]
fn the_checker_refuses_broken_xml() {
    let head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
    for bad in [
        "<a><b></a></b>",
        "<a>x & y</a>",
        "<a x=1/>",
        "<a/><b/>",
        "<a>",
        "<a x=\"<\"/>",
    ] {
        assert!(well_formed(&format!("{head}{bad}")).is_err(), "{bad}");
    }
    assert!(well_formed(&format!("{head}<a x=\"&lt;\"><b/>t &amp; u</a>\n")).is_ok());
}

#[test]
fn junit_is_well_formed_with_a_testcase_per_case_and_repeat() {
    // One failing case, with markup characters in its name and its message.
    let tests = format!(
        "{ECHO_TESTS}  - name: \"<fails> & 'quotes'\"\n    input: {{message: x}}\n    expect:\n      values:\n        - {{pointer: /response, equals: \"<&>\"}}\n"
    );
    let dir = project(
        OFFLINE,
        &[("acme/echo.yaml", ECHO), ("acme/echo.tests.yaml", &tests)],
    );
    let (code, stdout, _) = ares(dir.path(), &["test", "--junit", "report.xml"]);
    assert_eq!(code, 1, "{stdout}");
    let xml = read(dir.path(), "report.xml");
    let elements = well_formed(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    let names: Vec<&str> = elements.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "testsuites");
    assert_eq!(names.iter().filter(|n| **n == "testsuite").count(), 1);
    let cases: Vec<&Vec<(String, String)>> = elements
        .iter()
        .filter(|(n, _)| n == "testcase")
        .map(|(_, a)| a)
        .collect();
    let attr = |a: &Vec<(String, String)>, k: &str| {
        a.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let case_names: Vec<String> = cases.iter().map(|a| attr(a, "name")).collect();
    assert_eq!(
        case_names,
        [
            "greets",
            "repeats (run 1 of 3)",
            "repeats (run 2 of 3)",
            "repeats (run 3 of 3)",
            "&lt;fails&gt; &amp; &apos;quotes&apos;"
        ],
        "{xml}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "failure").count(),
        1,
        "{xml}"
    );
    let failure = elements.iter().find(|(n, _)| n == "failure").unwrap();
    assert!(
        attr(&failure.1, "message").contains("/response is &quot;"),
        "{xml}"
    );
    assert!(
        attr(&failure.1, "message").contains("&lt;&amp;&gt;"),
        "{xml}"
    );
    assert_eq!(attr(&elements[0].1, "tests"), "5");
    assert_eq!(attr(&elements[0].1, "failures"), "1");
}

#[test]
fn validate_reports_located_errors_in_a_bad_tests_file() {
    let bad = "\
cases:
  - name: one
    input: {message: hi}
    repeat: many
    expect:
      values:
        - {pointer: response, equals: 1}
        - {pointer: /a, matches: '[z-a]'}
      tool_called: [calculator]
      colour: red
";
    let dir = project(
        OFFLINE,
        &[
            ("acme/echo.yaml", ECHO),
            ("acme/echo.tests.yaml", bad),
            ("acme/ghost.tests.yaml", "cases: [{name: a, input: {}}]\n"),
        ],
    );
    let (code, stdout, stderr) = ares(dir.path(), &["validate"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    for expected in [
        "agents.d/acme/echo.tests.yaml:4:13: /cases/0/repeat: expected an integer between 1 and 100, got \"many\"",
        "agents.d/acme/echo.tests.yaml:7:21: /cases/0/expect/values/0/pointer: `response` is not a JSON pointer",
        "agents.d/acme/echo.tests.yaml:8:34: /cases/0/expect/values/1/matches: not a valid regular expression",
        "agents.d/acme/echo.tests.yaml:9:21: /cases/0/expect/tool_called/0: the agent does not offer `calculator`",
        "agents.d/acme/echo.tests.yaml:10:7: /cases/0/expect/colour: unknown field `colour`",
        "agents.d/acme/ghost.tests.yaml: no agent `ghost` beside this tests file",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "{expected}\nnot in\n{stdout}"
        );
    }
    assert_eq!(lines.len(), 6, "{stdout}");
    // `ares test` refuses to run them, with the same errors.
    let (code, test_out, _) = ares(dir.path(), &["test"]);
    assert_eq!(code, 1);
    assert_eq!(test_out, stdout);
}

#[test]
fn tests_files_and_cassettes_are_not_agents() {
    let dir = example();
    ares(dir.path(), &["test", "--record"]);
    let (code, _, stderr) = ares(dir.path(), &["validate"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("2 agents in 2 files, no errors; 2 tests files, 3 cases"),
        "{stderr}"
    );
    let entries: Vec<PathBuf> = std::fs::read_dir(dir.path().join("agents.d/acme"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 3, "agent, tests, cassette: {entries:?}");
}

#[test]
fn a_failed_run_can_be_expected_and_a_refused_input_fails_its_case() {
    // The upstream answers text where the agent's output_schema asks for an object: the run
    // fails, also after its repair.
    let (url, connections) = counting_upstream();
    let settings = format!(
        "providers:\n  net: {{kind: openai, base_url: \"{url}\", api_key_env: ARES_TEST_UNSET_KEY}}\nmodels:\n  m: {{provider: net, id: m}}\n"
    );
    let strict = format!("{TRIAGE}input_schema:\n  type: object\n  required: [message]\n");
    let tests = "\
cases:
  - name: not json
    input: {message: charged twice}
    expect:
      status: failed
      max_tokens: 18
  - name: no message
    input: {context: {}}
";
    let dir = project(
        &settings,
        &[
            ("_global/triage.yaml", &strict),
            ("_global/triage.tests.yaml", tests),
        ],
    );
    let (code, stdout, stderr) = ares(dir.path(), &["test"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("not json") && l.contains("pass") && l.contains(" 18 ")),
        "two model calls of 9 tokens, the answer and its repair: {stdout}"
    );
    assert!(
        stdout.contains(
            "agents.d/_global/triage.tests.yaml:8:12: /cases/1/input: case `no message`: the run was refused: "
        ) && stdout.contains("input_schema"),
        "{stdout}"
    );
    assert!(connections.load(Ordering::SeqCst) >= 1);

    // One token fewer than the run used fails the case, at the expectation.
    std::fs::write(
        dir.path().join("agents.d/_global/triage.tests.yaml"),
        tests.replace("max_tokens: 18", "max_tokens: 17"),
    )
    .unwrap();
    let (_, stdout, _) = ares(dir.path(), &["test"]);
    assert!(
        stdout.contains(
            "agents.d/_global/triage.tests.yaml:6:19: /cases/0/expect/max_tokens: case `not json`: the run used 18 tokens, more than 17"
        ),
        "{stdout}"
    );
}
