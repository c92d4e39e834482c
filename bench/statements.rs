//! Times single SurrealQL statements of the request path against `ares`'s own schema, to find
//! what a transaction's time is made of: counter updates, record writes, and rows bound as JSON
//! and rebuilt by the query against rows bound as SurrealDB's own values.
//!
//! `cargo run --release --example bench_statements -- [mem:// | surrealkv://DIR] [N] [FILTER]`
//! (each statement run N times after N/5 unmeasured ones; only names containing FILTER).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use surrealdb::types::{Array, Datetime, Object, RecordId, Value};

/// The server's allocator (`src/main.rs`), so statements are timed as it runs them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Eight chats as rows bound natively (record id and datetime made here).
fn native_chats(table: &str) -> Value {
    let rows: Vec<Value> = (0..8)
        .map(|_| {
            let mut row = BTreeMap::<String, Value>::new();
            let id = uuid::Uuid::now_v7().to_string();
            row.insert("id".into(), Value::RecordId(RecordId::new(table, id)));
            row.insert("tenant".into(), Value::String("t".into()));
            row.insert("model".into(), Value::String("m".into()));
            row.insert("finish_reason".into(), Value::String("stop".into()));
            row.insert("tokens_used".into(), Value::Number(5.into()));
            row.insert("created_at".into(), Value::Datetime(Datetime::now()));
            Value::Object(Object::from(row))
        })
        .collect();
    Value::Array(Array::from(rows))
}

/// The same eight chats as JSON, as the batches bound them before.
fn json_chats() -> serde_json::Value {
    (0..8)
        .map(|_| {
            json!({"id": uuid::Uuid::now_v7().to_string(), "tenant": "t", "model": "m",
                "finish_reason": "stop", "tokens_used": 5, "created_at": chrono::Utc::now()})
        })
        .collect()
}

fn p50(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).cloned().unwrap_or_else(|| "mem://".into());
    let n: usize = args.get(2).map_or(Ok(2000), |s| s.parse())?;
    let filter = args.get(3).cloned().unwrap_or_default();
    let db = surrealdb::engine::any::connect(url.as_str()).await?;
    db.use_ns("bench").use_db("bench").await?;
    for (_, sql) in ares::store::MIGRATIONS {
        db.query(*sql).await?.check()?;
    }
    // `run_plain` and `chat_plain`: the `run` and `chat` tables' fields without their indexes,
    // and `run_status_only` with only the index recovery reads, to see what they cost.
    for (copy, table, index) in [
        ("run_plain", "run", ""),
        ("chat_plain", "chat", ""),
        (
            "run_status_only",
            "run",
            "DEFINE INDEX run_status_only ON run_status_only FIELDS status;",
        ),
    ] {
        let fields: String = ares::store::MIGRATIONS
            .iter()
            .flat_map(|(_, sql)| sql.lines())
            .filter(|l| l.starts_with("DEFINE FIELD") && l.contains(&format!(" ON {table} ")))
            .map(|l| l.replace(&format!(" ON {table} "), &format!(" ON {copy} ")))
            .collect::<Vec<_>>()
            .join("\n");
        db.query(format!(
            "DEFINE TABLE {copy} SCHEMAFULL;\n{fields}\n{index}"
        ))
        .await?
        .check()?;
    }
    // `run_loose`: a run table with no field definitions, to see what checking them costs.
    db.query("DEFINE TABLE run_loose SCHEMALESS;")
        .await?
        .check()?;
    db.query(
        "CREATE usage_period:p SET tenant = 't', start = 's'; \
         CREATE usage_daily:d SET tenant = 't', date = 'd'; \
         CREATE usage_settled:p SET tenant = 't', start = 's'; \
         CREATE agent_state:a SET tenant = 't', name = 'a', created_at = time::now(); \
         CREATE agent_settled:a SET tenant = 't', total_runs = 3; \
         FOR $i IN 0..31 { \
           CREATE type::record('usage_daily', string::concat('t|', $i)) SET tenant = 't', date = <string> $i, \
             runs = 1, tokens = 5, api_calls = 2; \
         }; \
         FOR $i IN 0..20 { \
           CREATE type::record('agent_state', string::concat('a', $i)) SET tenant = 't', name = 'a', \
             created_at = time::now(); \
           CREATE type::record('agent_settled', string::concat('a', $i)) SET tenant = 't', total_runs = 3; \
         }; \
         CREATE tenant:t SET slug = 't', name = 't', quota_runs = 1, quota_tokens = 1, created_at = time::now(), \
           webhook_endpoints = 0;",
    )
    .await?
    .check()?;
    let run = "{ run_id: <string> rand::uuid::v7(), seq: $n, tenant: 't', agent: 'a', agent_id: 'a', \
        status: 'running', input: { message: 'hello', context: { amount: 1 } }, \
        started_at: time::now(), tokens_used: 0, instance: 'i', deadline: time::now(), agent_version: 'v' }";
    let create_run = format!(
        "LET $n = rand::int(1, 1000000000); CREATE type::record('run', ['a', $n]) CONTENT {run} RETURN NONE;"
    );
    let create8 = format!(
        "LET $n = 1; LET $keys = array::map([1, 2, 3, 4, 5, 6, 7, 8], |$i| <string> rand::uuid::v7()); \
         LET $ids = $keys.map(|$k| type::record('run', [$k, 1])); \
         INSERT INTO run $ids.map(|$id| object::extend({run}, {{ id: $id }})) RETURN NONE;"
    );
    // Settling runs as the ledger binds them (a record id, a patch), written out.
    let settling8 = format!(
        "LET $sr = [{}];",
        (0..8)
            .map(|i| format!("{{ rid: $ids[{i}], patch: {{ status: 'completed', tokens_used: 5 }}, completed: 1, \
                steps: [{{ n: 1, step: {{ kind: 'model', name: 'm', tokens: 5 }} }}], \
                events: [{{ id: type::record('run_event', [<string> $ids[{i}], 1]), step: {{ kind: 'model', name: 'm', tokens: 5 }} }}] }}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Runs to start as the ledger binds them (a run record and its `run_ref`, without their
    // numbers), from a random base number so that each iteration's ids are new.
    let starting8 = format!(
        "LET $bb = rand::int(1, 1000000000) * 100; LET $bn = 8; LET $br = [{}];",
        (0..8)
            .map(|_| format!(
                "{{ run: {}, by_id: {{ id: type::record('run_ref', <string> rand::uuid::v7()), \
                agent_id: 'a', tenant: 't' }} }}",
                run.replace("seq: $n, ", "")
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cases: Vec<(&str, String)> = vec![
        ("RETURN 1", "RETURN 1;".into()),
        ("ten LET statements", "LET $a = 1; ".repeat(10) + "RETURN 1;"),
        ("UPDATE a counter row", "UPDATE usage_period:p SET runs += 1, reserved_runs -= 1, tokens += 3 RETURN NONE;".into()),
        ("UPSERT a counter row", "UPSERT usage_daily:d SET tenant = 't', date = 'd', runs += 1, tokens += 3 RETURN NONE;".into()),
        ("UPDATE a counter row, tokens only", "UPDATE usage_daily:d SET tokens += 3 RETURN NONE;".into()),
        ("UPDATE a counter row, else UPSERT it", "IF !(UPDATE usage_daily:d SET tokens += 3 RETURN VALUE true) { \
            UPSERT usage_daily:d SET tenant = 't', date = 'd', tokens += 3 RETURN NONE; };".into()),
        ("UPDATE a missing counter row, else UPSERT it", "IF !(UPDATE usage_daily:nope SET tokens += 3 RETURN VALUE true) { \
            UPSERT usage_daily:nope SET tenant = 't', date = 'd', tokens += 3 RETURN NONE; };".into()),
        ("two counter rows: UPSERT each", "UPSERT usage_daily:d SET tenant = 't', date = 'd', tokens += 3 RETURN NONE; \
            UPSERT usage_settled:p SET tenant = 't', start = 's', tokens += 3 RETURN NONE;".into()),
        ("two counter rows: UPDATE each, else UPSERT", "IF !(UPDATE usage_daily:d SET tokens += 3 RETURN VALUE true) { \
            UPSERT usage_daily:d SET tenant = 't', date = 'd', tokens += 3 RETURN NONE; }; \
            IF !(UPDATE usage_settled:p SET tokens += 3 RETURN VALUE true) { \
            UPSERT usage_settled:p SET tenant = 't', start = 's', tokens += 3 RETURN NONE; };".into()),
        ("two counter rows: one UPDATE of both", "UPDATE [usage_daily:d, usage_settled:p] SET tokens += 3 RETURN NONE;".into()),
        ("in one transaction: two counter rows, UPSERT each", "BEGIN; UPSERT usage_daily:d SET tenant = 't', date = 'd', tokens += 3 RETURN NONE; \
            UPSERT usage_settled:p SET tenant = 't', start = 's', tokens += 3 RETURN NONE; COMMIT;".into()),
        ("in one transaction: two counter rows, UPDATE each", "BEGIN; UPDATE usage_daily:d SET tokens += 3 RETURN NONE; \
            UPDATE usage_settled:p SET tokens += 3 RETURN NONE; COMMIT;".into()),
        ("in one transaction: two counter rows, one UPDATE of both", "BEGIN; UPDATE [usage_daily:d, usage_settled:p] SET tokens += 3 RETURN NONE; COMMIT;".into()),
        ("in one transaction: two counter rows, UPDATE each with tenant and date", "BEGIN; UPDATE usage_daily:d SET tenant = 't', date = 'd', tokens += 3 RETURN NONE; \
            UPDATE usage_settled:p SET tenant = 't', start = 's', tokens += 3 RETURN NONE; COMMIT;".into()),
        ("in one transaction: two counter rows, UPDATE each, else UPSERT", "BEGIN; \
            IF !(UPDATE usage_daily:d SET tokens += 3 RETURN VALUE true) { UPSERT usage_daily:d SET tenant = 't', date = 'd', tokens += 3 RETURN NONE; }; \
            IF !(UPDATE usage_settled:p SET tokens += 3 RETURN VALUE true) { UPSERT usage_settled:p SET tenant = 't', start = 's', tokens += 3 RETURN NONE; }; COMMIT;".into()),
        ("in one transaction: two counter rows, INSERT each ON DUPLICATE KEY UPDATE", "BEGIN; \
            INSERT INTO usage_daily { id: usage_daily:d, tenant: 't', date: 'd', tokens: 3 } ON DUPLICATE KEY UPDATE tokens += 3 RETURN NONE; \
            INSERT INTO usage_settled { id: usage_settled:p, tenant: 't', start: 's', tokens: 3 } ON DUPLICATE KEY UPDATE tokens += 3 RETURN NONE; COMMIT;".into()),
        ("in one transaction: two missing counter rows, INSERT each ON DUPLICATE KEY UPDATE", "BEGIN; LET $k = <string> rand::uuid::v7(); \
            INSERT INTO usage_daily { id: type::record('usage_daily', $k), tenant: 't', date: 'd', tokens: 3 } ON DUPLICATE KEY UPDATE tokens += 3 RETURN NONE; \
            INSERT INTO usage_settled { id: type::record('usage_settled', $k), tenant: 't', start: 's', tokens: 3 } ON DUPLICATE KEY UPDATE tokens += 3 RETURN NONE; COMMIT;".into()),
        ("in one transaction: two missing counter rows, UPSERT each", "BEGIN; LET $k = <string> rand::uuid::v7(); \
            UPSERT type::record('usage_daily', $k) SET tenant = 't', date = 'd', tokens += 3 RETURN NONE; \
            UPSERT type::record('usage_settled', $k) SET tenant = 't', start = 's', tokens += 3 RETURN NONE; COMMIT;".into()),
        ("in one transaction: two counter rows, one UPDATE of both, checked", "BEGIN; \
            LET $u = UPDATE [usage_daily:d, usage_settled:p] SET tokens += 3 RETURN VALUE true; \
            IF array::len($u) < 2 { THROW 'a counter row is missing' }; COMMIT;".into()),
        ("in one transaction: two counter rows, UPDATE each, checked", "BEGIN; \
            LET $u0 = UPDATE usage_daily:d SET tokens += 3 RETURN VALUE true; \
            LET $u1 = UPDATE usage_settled:p SET tokens += 3 RETURN VALUE true; \
            IF array::len($u0) + array::len($u1) < 2 { THROW 'a counter row is missing' }; COMMIT;".into()),
        ("in one transaction: two counter rows, UPDATE ONLY each", "BEGIN; \
            UPDATE ONLY usage_daily:d SET tokens += 3 RETURN NONE; \
            UPDATE ONLY usage_settled:p SET tokens += 3 RETURN NONE; COMMIT;".into()),
        ("in one transaction: a missing counter row, UPDATE ONLY", "BEGIN; \
            UPDATE ONLY usage_daily:nope SET tokens += 3 RETURN NONE; COMMIT;".into()),
        ("in one transaction: two counter rows, one UPDATE of both, then RETURN", "BEGIN; \
            UPDATE [usage_daily:d, usage_settled:p] SET tokens += 3 RETURN NONE; RETURN { a: 1 }; COMMIT;".into()),
        ("in one transaction: two counter rows, one UPDATE of both, RETURN checks them", "BEGIN; \
            UPDATE [usage_daily:d, usage_settled:p] SET tokens += 3 RETURN NONE; \
            RETURN { a: 1, k: <array<int>> [usage_daily:d, usage_settled:p].tokens }; COMMIT;".into()),
        ("in one transaction: RETURN 1", "BEGIN; RETURN 1; COMMIT;".into()),
        ("reserve a run (conditional UPDATE)", "RETURN array::len((UPDATE usage_period:p SET reserved_runs += 1 \
            WHERE runs + reserved_runs < 100000000 AND tokens < 100000000000 RETURN VALUE reserved_runs)) > 0;".into()),
        ("UPSERT agent_state run_seq", "UPSERT agent_state:a SET tenant = 't', name = 'a', \
            created_at = created_at ?? time::now(), run_seq += 1 RETURN VALUE run_seq;".into()),
        ("UPDATE agent_state run_seq", "UPDATE agent_state:a SET run_seq += 1 RETURN VALUE run_seq;".into()),
        ("CREATE a run record", create_run.clone()),
        ("CREATE a run record, then settle it", format!("{create_run} UPDATE type::record('run', ['a', $n]) \
            SET status = 'completed', output = {{ response: 'ok' }}, finished_at = time::now(), duration_ms = 3, \
            tokens_used = 5 WHERE status = 'running' RETURN NONE;")),
        ("CREATE a run record (no indexes)", create_run.replace("'run'", "'run_plain'")),
        ("CREATE a run record (no field definitions)", create_run.replace("'run'", "'run_loose'")),
        ("CREATE a run record (status index only)", create_run.replace("'run'", "'run_status_only'")),
        ("CREATE a run record, then settle it (status index only)", format!("{create_run} UPDATE type::record('run', ['a', $n]) \
            SET status = 'completed', output = {{ response: 'ok' }}, finished_at = time::now(), duration_ms = 3, \
            tokens_used = 5 WHERE status = 'running' RETURN NONE;").replace("'run'", "'run_status_only'")),
        ("CREATE a run record, then settle it (no indexes)", format!("{create_run} UPDATE type::record('run', ['a', $n]) \
            SET status = 'completed', output = {{ response: 'ok' }}, finished_at = time::now(), duration_ms = 3, \
            tokens_used = 5 WHERE status = 'running' RETURN NONE;").replace("'run'", "'run_plain'")),
        ("8 runs created", create8.clone()),
        ("8 runs created (no indexes)", create8.replace("'run'", "'run_plain'").replace("INTO run ", "INTO run_plain ")),
        ("8 runs created, then settled: read, then merged", format!("{create8} \
            LET $sd = $ids.filter(|$r| $r.status = 'running'); \
            FOR $r IN $sd {{ UPDATE $r MERGE {{ status: 'completed', tokens_used: 5 }} RETURN NONE; }}; \
            RETURN array::len($sd);")),
        ("8 runs created, then settled: read written out, then merged", format!("{create8} \
            LET $sd = array::complement([{}], [NONE]); \
            FOR $r IN $sd {{ UPDATE $r MERGE {{ status: 'completed', tokens_used: 5 }} RETURN NONE; }}; \
            RETURN array::len($sd);", (0..8).map(|i| format!("IF $ids[{i}].status = 'running' {{ $ids[{i}] }}"))
                .collect::<Vec<_>>().join(", "))),
        ("8 runs created, then settled: merged where running", format!("{create8} \
            LET $sd = $ids.filter(|$r| array::len((UPDATE $r MERGE {{ status: 'completed', tokens_used: 5 }} \
              WHERE status = 'running' RETURN VALUE run_id)) > 0); \
            RETURN array::len($sd);")),
        ("8 settling runs: kept running by .filter()", format!("{create8} {settling8} \
            LET $sd = $sr.filter(|$r| $r.rid.status = 'running'); RETURN array::len($sd);")),
        ("8 settling runs: kept running by [WHERE]", format!("{create8} {settling8} \
            LET $sd = $sr[WHERE rid.status = 'running']; RETURN array::len($sd);")),
        ("8 settling runs: kept running written out", format!("{create8} {settling8} \
            LET $sd = array::complement([{}], [NONE]); RETURN array::len($sd);", (0..8)
                .map(|i| format!("IF $sr[{i}].rid.status = 'running' {{ $sr[{i}] }}")).collect::<Vec<_>>().join(", "))),
        ("8 settling runs: merged with a step each, by FOR", format!("{create8} {settling8} \
            LET $sd = $sr[WHERE rid.status = 'running']; \
            FOR $r IN $sd {{ UPDATE $r.rid MERGE $r.patch RETURN NONE; \
              FOR $e IN $r.steps {{ UPSERT type::record('run_event', [<string> $r.rid, $e.n]) SET step = $e.step RETURN NONE; }}; }};")),
        ("8 settling runs: merged with a step each, by FOR, steps by INSERT IGNORE", format!("{create8} {settling8} \
            LET $sd = $sr[WHERE rid.status = 'running']; \
            FOR $r IN $sd {{ UPDATE $r.rid MERGE $r.patch RETURN NONE; \
              INSERT IGNORE INTO run_event $r.events RETURN NONE; }};")),
        ("8 settling runs: merged with a step each, by FOR, all steps by one INSERT IGNORE", format!("{create8} {settling8} \
            LET $sd = $sr[WHERE rid.status = 'running']; \
            FOR $r IN $sd {{ UPDATE $r.rid MERGE $r.patch RETURN NONE; }}; \
            INSERT IGNORE INTO run_event array::flatten($sd.events) RETURN NONE;")),
        ("8 settling runs: merged with a step each, written out", format!("{create8} {settling8} \
            LET $sd = $sr[WHERE rid.status = 'running']; {}", (0..8).map(|k| format!(
                "IF $sr[{k}].rid.status = 'running' {{ UPDATE $sr[{k}].rid MERGE $sr[{k}].patch RETURN NONE; \
                 INSERT IGNORE INTO run_event [{{ id: type::record('run_event', [<string> $sr[{k}].rid, 1]), step: $sr[{k}].steps[0].step }}] RETURN NONE; }};"))
                .collect::<Vec<_>>().join(" "))),
        ("8 runs started: numbered by .map()", format!("{starting8} \
            INSERT INTO run array::slice($br, 0, $bn).map(|$x, $k| object::extend($x.run, {{ \
              id: type::record('run', ['a', $bb + $k + 1]), seq: $bb + $k + 1 }})) RETURN NONE; \
            INSERT INTO run_ref array::slice($br, 0, $bn).map(|$x, $k| object::extend($x.by_id, {{ \
              seq: $bb + $k + 1 }})) RETURN NONE;")),
        ("8 runs started: numbered written out", format!("{starting8} \
            INSERT INTO run array::slice([{}], 0, $bn) RETURN NONE; \
            INSERT INTO run_ref array::slice([{}], 0, $bn) RETURN NONE;",
            (0..8).map(|k| format!("object::extend($br[{k}].run, {{ id: type::record('run', ['a', $bb + {n}]), seq: $bb + {n} }})", n = k + 1))
                .collect::<Vec<_>>().join(", "),
            (0..8).map(|k| format!("object::extend($br[{k}].by_id, {{ seq: $bb + {n} }})", n = k + 1))
                .collect::<Vec<_>>().join(", "))),
        ("INSERT IGNORE of no rows", "INSERT IGNORE INTO run_event array::flatten([[], []]) RETURN NONE;".into()),
        ("read a record's field", "RETURN usage_period:p.runs;".into()),
        ("closures: 20 numbers mapped", "RETURN [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20].map(|$x| $x + 1);".into()),
        ("closures: 20 numbers mapped with their index", "RETURN [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20].map(|$x, $k| $x + $k);".into()),
        ("closures: 20 objects extended", "RETURN [{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1}].map(|$x, $k| object::extend($x, { b: $k }));".into()),
        ("closures: 20 objects filtered", "RETURN [{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1},{a:1}].filter(|$x| $x.a = 1);".into()),
        ("closures: none, 20 numbers written out", "RETURN [2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21];".into()),
        ("days of usage: 31, by .map()", format!("RETURN {}.map(|$k| type::record('usage_daily', $k)\
            .{{date, runs, tokens, api_calls}}).filter(|$d| $d.date != NONE);",
            serde_json::to_string(&(0..31).map(|i| format!("t|{i}")).collect::<Vec<_>>())?)),
        ("days of usage: 31, written out", format!("RETURN [{}];", (0..31)
            .map(|i| format!("usage_daily:⟨t|{i}⟩.{{date, runs, tokens, api_calls}}")).collect::<Vec<_>>().join(", "))),
        ("agent counters: an agent, by .map()", "RETURN [{ id: 'a' }].map(|$a| { \
            state: type::record('agent_state', $a.id).{created_at, total_runs, completed_runs, last_run, run_seq, purged_seq}, \
            settled: type::record('agent_settled', $a.id).{total_runs, completed_runs, last_run} });".into()),
        ("agent counters: an agent, two SELECTs", "SELECT <string> record::id(id) AS id, created_at, total_runs, \
            completed_runs, last_run, run_seq, purged_seq FROM [agent_state:a]; \
            SELECT <string> record::id(id) AS id, total_runs, completed_runs, last_run FROM [agent_settled:a];".into()),
        ("agent counters: an agent, one object", "RETURN { state: agent_state:a.{created_at, total_runs, completed_runs, \
            last_run, run_seq, purged_seq}, settled: agent_settled:a.{total_runs, completed_runs, last_run} };".into()),
        ("agent counters: 20 agents, by .map()", format!("RETURN {}.map(|$a| {{ \
            state: type::record('agent_state', $a.id).{{created_at, total_runs, completed_runs, last_run, run_seq, purged_seq}}, \
            settled: type::record('agent_settled', $a.id).{{total_runs, completed_runs, last_run}} }});",
            serde_json::to_string(&(0..20).map(|i| json!({"id": format!("a{i}")})).collect::<Vec<_>>())?)),
        ("agent counters: 20 agents, one object each", format!("RETURN [{}];", (0..20).map(|i| format!(
            "{{ state: agent_state:a{i}.{{created_at, total_runs, completed_runs, last_run, run_seq, purged_seq}}, \
            settled: agent_settled:a{i}.{{total_runs, completed_runs, last_run}} }}")).collect::<Vec<_>>().join(", "))),
        ("any webhook endpoint of a tenant, by a query", "RETURN array::len((SELECT VALUE webhook_id FROM webhook \
            WHERE tenant IN ['t'] LIMIT 1)) > 0;".into()),
        ("any webhook endpoint of a tenant, from its row's count", "RETURN \
            array::max([tenant:t].webhook_endpoints) > 0;".into()),
        ("8 chats from JSON rebuilt by .map()", "BEGIN; INSERT IGNORE INTO chat $json.map(|$c| { \
            id: type::record('chat', $c.id), tenant: $c.tenant, model: $c.model, finish_reason: $c.finish_reason, \
            tokens_used: $c.tokens_used, created_at: <datetime>$c.created_at }) RETURN NONE; COMMIT;".into()),
        ("8 chats bound natively", "BEGIN; INSERT IGNORE INTO chat $native RETURN NONE; COMMIT;".into()),
        ("8 chats bound natively (no index)", "BEGIN; INSERT IGNORE INTO chat_plain $plain_chats RETURN NONE; \
            COMMIT;".into()),
    ];
    println!("store: {url}; p50 of {n} runs of each statement, in microseconds");
    for (name, sql) in cases {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let mut times = Vec::with_capacity(n);
        for i in 0..n + n / 5 {
            // Rows are made and bound inside the timing: converting JSON is part of what the
            // JSON form costs.
            let t = Instant::now();
            let mut query = db.query(sql.as_str());
            if sql.contains("$json") {
                query = query.bind(("json", json_chats()));
            }
            if sql.contains("$native") {
                query = query.bind(("native", native_chats("chat")));
            }
            if sql.contains("$plain_chats") {
                query = query.bind(("plain_chats", native_chats("chat_plain")));
            }
            query.await?.check()?;
            if i >= n / 5 {
                times.push(t.elapsed());
            }
        }
        println!("{:>9.1}  {name}", p50(times));
    }
    Ok(())
}
