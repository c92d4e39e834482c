//! The SurrealQL of the ledger's writes: the rows a write binds, the script of a batch, the webhook
//! outbox, and the counter rows known to exist.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use surrealdb::types::{Datetime, RecordId, Value as NativeValue};

use super::super::Native;
use super::super::records::{ChatRecord, RunRecord, RunStatus, numbered_id, run_record_id};

/// Whether a tenant among `$hooked` (SurrealQL: the tenants' record ids, see [`hooked`]) has a
/// webhook endpoint: read from the count an event keeps on each tenant's row (schema version
/// 10), which costs a record read where a query of `webhook` cost four times as much.
pub(super) const HOOKED: &str = "array::max($hooked.webhook_endpoints) > 0";

/// `$hooked` for [`HOOKED`]: the record ids of `tenants`.
pub(super) fn hooked<'a>(tenants: impl IntoIterator<Item = &'a str>) -> NativeValue {
    NativeValue::Array(
        tenants
            .into_iter()
            .map(|t| NativeValue::RecordId(RecordId::new("tenant", t)))
            .collect::<Vec<_>>()
            .into(),
    )
}

/// Most counter rows [`KnownRows`] holds before it forgets them all (and learns again).
pub(super) const MAX_KNOWN_ROWS: usize = 100_000;

/// The counter rows (`usage_period`, `usage_settled`, `usage_daily`, `agent_state`,
/// `agent_settled`) this process has seen committed. A batch whose rows are all known updates
/// them (`UPDATE … SET tokens += …`) instead of upserting them: SurrealDB evaluates an `UPSERT`
/// of an existing row at about twice the cost of the same `UPDATE` (`bench_statements … "in one
/// transaction: two counter rows"`). This relies on counter rows never being deleted, which no
/// path of `ares` does (`docs/ARCHITECTURE.md`, invariants): an `UPDATE` of a missing row would
/// count nothing.
#[derive(Default)]
pub(in crate::store) struct KnownRows {
    rows: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl KnownRows {
    pub(super) fn knows(&self, rows: &[String]) -> bool {
        let known = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.iter().all(|r| known.contains(r))
    }

    pub(super) fn learn(&self, rows: &[String]) {
        let mut known = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() + rows.len() > MAX_KNOWN_ROWS {
            known.clear();
        }
        known.extend(rows.iter().cloned());
    }
}

/// The name [`KnownRows`] holds a counter row by.
pub(super) fn row(table: &str, key: &str) -> String {
    format!("{table}:{key}")
}

/// The statement that writes the steps not yet written (`$r.events`, bound as `run_event` rows)
/// of a settling run `$r`: one `INSERT` (a loop of `UPSERT`s cost 80 µs more a run,
/// `bench_statements … "8 settling runs: merged with a step each"`).
pub(super) const EVENTS: &str = "INSERT IGNORE INTO run_event $r.events RETURN NONE;";

/// The statement that writes the steps not yet written (`$r.steps`, `{n, step}`) of an
/// interrupted run amended with its real outcome.
pub(super) const STEPS: &str = "FOR $e IN $r.steps { UPSERT type::record('run_event', [$r.run_id, $e.n]) SET step = $e.step RETURN NONE; };";

/// Where an op's answer is in the transaction's result.
pub(super) enum Slot {
    Chat,
    Begin { group: usize, index: usize },
    Settle { group: usize, run_id: String },
}

/// One group of a batch: the ops that share the rows a fragment of the script writes.
pub(super) struct Group {
    pub(super) vars: Map<String, Value>,
    /// The ops' rows, bound natively.
    pub(super) items: Vec<NativeValue>,
    /// The counter rows the group's fragment writes (see [`KnownRows`]).
    pub(super) counters: Vec<String>,
    /// A settling run of the group has steps to write.
    pub(super) events: bool,
}

/// A group as the script sees it.
#[derive(Debug, Clone)]
pub(super) struct Bound {
    pub(super) size: usize,
    /// The counter rows it writes.
    pub(super) counters: Vec<String>,
    /// All of them were seen committed: the script updates them.
    pub(super) known: bool,
    /// A settling run of the group has steps to write.
    pub(super) events: bool,
}

/// Groups in first-seen order, by key.
#[derive(Default)]
pub(super) struct Groups {
    pub(super) index: HashMap<String, usize>,
    pub(super) list: Vec<Group>,
}

impl Groups {
    /// Adds `item` to the group `key` (made with `vars` and the counter rows it writes when
    /// new); returns the group and the item's position in it.
    pub(super) fn add(
        &mut self,
        key: String,
        vars: impl FnOnce() -> (Map<String, Value>, Vec<String>),
        item: NativeValue,
    ) -> (usize, usize) {
        let g = *self.index.entry(key).or_insert_with(|| {
            let (vars, counters) = vars();
            self.list.push(Group {
                vars,
                items: Vec::new(),
                counters,
                events: false,
            });
            self.list.len() - 1
        });
        self.list[g].items.push(item);
        (g, self.list[g].items.len() - 1)
    }

    /// Binds group `i` as `$<prefix><i>` and its rows, natively, as `$<prefix>r<i>`; returns
    /// the groups as the script sees them.
    pub(super) fn bind(
        self,
        prefix: &str,
        known: &KnownRows,
        out: &mut Map<String, Value>,
        native: &mut Native,
    ) -> Vec<Bound> {
        let mut bound = Vec::with_capacity(self.list.len());
        for (i, g) in self.list.into_iter().enumerate() {
            bound.push(Bound {
                size: g.items.len(),
                known: known.knows(&g.counters),
                counters: g.counters,
                events: g.events,
            });
            out.insert(format!("{prefix}{i}"), Value::Object(g.vars));
            native.insert(format!("{prefix}r{i}"), NativeValue::Array(g.items.into()));
        }
        bound
    }
}

pub(super) fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A count as a native number: SurrealDB's own conversion of a `u64` wraps past `i64::MAX`,
/// where JSON's makes a number the `int` fields refuse, as they should.
pub(super) fn count(n: u64) -> Value {
    json!(n)
}

/// A chat as its `chat` row, bound natively: stored as it is, with no expression per field.
pub(super) fn chat_row(chat: &ChatRecord) -> NativeValue {
    let mut row = Native::new();
    row.insert("id", RecordId::new("chat", chat.id.as_str()));
    row.insert("tenant", chat.tenant.as_str());
    row.insert("model", chat.model.as_str());
    row.insert("finish_reason", chat.finish_reason.as_str());
    row.insert("tokens_used", count(chat.tokens_used));
    row.insert("created_at", Datetime::from(chat.created_at));
    NativeValue::Object(row)
}

/// A run to start, bound natively: its `running` record (`run`) and its `run_ref` (`by_id`),
/// but for their numbers, which the transaction gives.
pub(super) fn begin_row(run: &RunRecord, instance: &str) -> NativeValue {
    let mut record = Native::new();
    record.insert("run_id", run.id.as_str());
    record.insert("tenant", run.tenant.as_str());
    record.insert("agent", run.agent.as_str());
    record.insert("agent_id", run.agent_id.as_str());
    record.insert("status", run.status.as_str());
    record.insert("input", run.input.clone());
    record.insert("started_at", Datetime::from(run.started_at));
    record.insert("tokens_used", 0);
    record.insert("instance", instance);
    if let Some(deadline) = run.deadline {
        record.insert("deadline", Datetime::from(deadline));
    }
    if let Some(version) = &run.agent_version {
        record.insert("agent_version", version.as_str());
    }
    let mut by_id = Native::new();
    by_id.insert("id", RecordId::new("run_ref", run.id.as_str()));
    by_id.insert("agent_id", run.agent_id.as_str());
    by_id.insert("tenant", run.tenant.as_str());
    let mut row = Native::new();
    row.insert("run", record);
    row.insert("by_id", by_id);
    NativeValue::Object(row)
}

/// A settling run, bound natively: its record (`rid`), what its settlement sets on it
/// (`patch`, whose `status` and `tokens_used` the counters and the outbox read too), and what
/// else they and the steps read.
pub(super) fn settle_row(run: &RunRecord, steps: &[Value]) -> NativeValue {
    let mut patch = Native::new();
    patch.insert("status", run.status.as_str());
    if let Some(output) = &run.output {
        patch.insert("output", output.clone());
    }
    if let Some(error) = &run.error {
        patch.insert("error", error.as_str());
    }
    if let Some(finished) = run.finished_at {
        patch.insert("finished_at", Datetime::from(finished));
    }
    if let Some(ms) = run.duration_ms {
        patch.insert("duration_ms", count(ms));
    }
    patch.insert("tokens_used", count(run.tokens_used));
    let mut row = Native::new();
    row.insert("rid", run_record_id(&run.agent_id, run.seq));
    row.insert("patch", patch);
    row.insert("run_id", run.id.as_str());
    row.insert("completed", u64::from(run.status == RunStatus::Completed));
    row.insert("started_at", Datetime::from(run.started_at));
    // Its steps not written yet, as `run_event` rows: inserted, never overwritten (a step
    // written before, by an earlier try of the same settlement, is the same step).
    let events: Vec<NativeValue> = steps
        .iter()
        .map(|e| {
            let n = e["n"].as_u64().unwrap_or_default();
            let mut event = Native::new();
            event.insert("id", numbered_id("run_event", &run.id, n));
            event.insert("step", e["step"].clone());
            NativeValue::Object(event)
        })
        .collect();
    row.insert("events", NativeValue::Array(events.into()));
    NativeValue::Object(row)
}

/// The statements that write the webhook outbox of one settled run, in the settling
/// transaction: a delivery of its event (`run.<status>`) to each endpoint of the tenant that
/// subscribed to it. `tenant`, `run_id` and `status` are SurrealQL expressions of the
/// transaction (variables), never values.
pub(super) fn outbox(tenant: &str, run_id: &str, status: &str) -> String {
    format!(
        "LET $ev_type = string::concat('run.', {status}); \
         LET $ev_id = <string> rand::uuid::v7(); \
         FOR $hook IN (SELECT VALUE webhook_id FROM webhook WHERE tenant = {tenant} \
           AND (events CONTAINS $ev_type OR events CONTAINS '*')) {{ \
           LET $dv = <string> rand::uuid::v7(); \
           CREATE type::record('webhook_delivery', $dv) CONTENT {{ delivery_id: $dv, webhook_id: $hook, \
             tenant: {tenant}, event_id: $ev_id, event_type: $ev_type, run_id: {run_id}, attempts: 0, \
             state: 'pending', next_attempt_at: time::now(), created_at: time::now() }} RETURN NONE; \
         }};"
    )
}

/// The transaction for chat groups (by period and day), settlement groups (by period, day and
/// agent) and run-start groups (by period and agent), bound as `$c0..`, `$s0..`, `$b0..`
/// (their rows natively as `$cr0..`, `$sr0..`, `$br0..`). Chats and settlements come first,
/// so that run starts see the tokens they add. A group whose counter rows are all known to
/// exist updates them; the others upsert them, and the answer says which wrote theirs.
///
/// No closure is called per row: SurrealDB evaluates a closure call at several times the cost
/// of the same expression written out or of an array filter (`bench_statements … "8 settling
/// runs"`, `… "8 runs started"`). Settling runs are kept by a filter (`[WHERE …]`); runs to
/// start are written out once per row (`$br0[3]`).
pub(super) fn script(chats: &[Bound], settles: &[Bound], begins: &[Bound]) -> String {
    let mut sql = String::from("BEGIN;\n");
    for (i, g) in chats.iter().enumerate() {
        let _ = writeln!(
            sql,
            "LET $cn{i} = INSERT IGNORE INTO chat $cr{i} RETURN VALUE tokens_used;"
        );
        if g.known {
            // A chat already stored adds nothing.
            let _ = write!(
                sql,
                "UPDATE type::record('usage_settled', $c{i}.period) SET tokens += math::sum($cn{i}) RETURN NONE;
UPDATE type::record('usage_daily', $c{i}.day) SET tokens += math::sum($cn{i}) RETURN NONE;
"
            );
        } else {
            let _ = write!(
                sql,
                "IF array::len($cn{i}) > 0 {{
  UPSERT type::record('usage_settled', $c{i}.period) SET tenant = $c{i}.tenant, start = $c{i}.start,
    tokens += math::sum($cn{i}) RETURN NONE;
  UPSERT type::record('usage_daily', $c{i}.day) SET tenant = $c{i}.tenant, date = $c{i}.date,
    tokens += math::sum($cn{i}) RETURN NONE;
}};
"
            );
        }
    }
    if !settles.is_empty() {
        // Whether any tenant settling here has webhook endpoints: the outbox is skipped
        // otherwise.
        let _ = writeln!(sql, "LET $hooks_any = {HOOKED};");
    }
    for (i, g) in settles.iter().enumerate() {
        let outbox = outbox(&format!("$s{i}.tenant"), "$r.run_id", "$r.patch.status");
        // The steps of the group's runs not written yet, in one statement.
        let events = if g.events {
            format!("INSERT IGNORE INTO run_event array::flatten($sd{i}.events) RETURN NONE;")
        } else {
            String::new()
        };
        let (write, set_settled, set_daily, set_agent) = if g.known {
            ("UPDATE", String::new(), String::new(), String::new())
        } else {
            (
                "UPSERT",
                format!("tenant = $s{i}.tenant, start = $s{i}.start, "),
                format!("tenant = $s{i}.tenant, date = $s{i}.date, "),
                format!("tenant = $s{i}.tenant, "),
            )
        };
        // The group's runs still `running` (a retried settlement finds its run settled).
        let _ = write!(
            sql,
            "LET $sd{i} = $sr{i}[WHERE rid.status = 'running'];
FOR $r IN $sd{i} {{
  UPDATE $r.rid MERGE $r.patch RETURN NONE;
  IF $hooks_any {{ {outbox} }};
}};
IF array::len($sd{i}) > 0 {{
  {events}
  {write} type::record('usage_settled', $s{i}.period) SET {set_settled}
    runs += array::len($sd{i}), tokens += math::sum($sd{i}.patch.tokens_used) RETURN NONE;
  {write} type::record('usage_daily', $s{i}.day) SET {set_daily}
    runs += array::len($sd{i}), tokens += math::sum($sd{i}.patch.tokens_used) RETURN NONE;
  {write} type::record('agent_settled', $s{i}.agent_id) SET {set_agent}
    total_runs += array::len($sd{i}), completed_runs += math::sum($sd{i}.completed),
    last_run = array::max($sd{i}.started_at) RETURN NONE;
}};
"
        );
    }
    for (i, g) in begins.iter().enumerate() {
        let size = g.size;
        // The group's runs and their references, numbered from the agent's last number; the
        // first `$bn{i}` of them are stored. `row(k, n)` writes row `k`, numbered `$bb{i} + n`.
        let each = |row: &dyn Fn(usize, usize) -> String| {
            (0..size)
                .map(|k| row(k, k + 1))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let runs = each(&|k, n| {
            format!(
                "object::extend($br{i}[{k}].run, {{ id: type::record('run', [$b{i}.agent_id, $bb{i} + {n}]), seq: $bb{i} + {n} }})"
            )
        });
        let refs =
            each(&|k, n| format!("object::extend($br{i}[{k}].by_id, {{ seq: $bb{i} + {n} }})"));
        let count_run = if g.known {
            format!(
                "UPDATE type::record('agent_state', $b{i}.agent_id) SET run_seq += $bn{i} RETURN NONE;"
            )
        } else {
            // An UPSERT that creates ignores its condition: this makes a new period's row and
            // leaves an existing one alone.
            let _ = writeln!(
                sql,
                "UPSERT type::record('usage_period', $b{i}.key) SET tenant = $b{i}.tenant, start = $b{i}.start WHERE false RETURN NONE;"
            );
            format!(
                "UPSERT type::record('agent_state', $b{i}.agent_id) SET tenant = $b{i}.tenant, name = $b{i}.agent,
    created_at = created_at ?? time::now(), run_seq += $bn{i} RETURN NONE;"
            )
        };
        let _ = write!(
            sql,
            "LET $bp{i} = type::record('usage_period', $b{i}.key).{{runs, reserved_runs, tokens}};
LET $bn{i} = IF $bp{i}.tokens + (type::record('usage_settled', $b{i}.key).tokens ?? 0) < $b{i}.qt {{
  math::min([{size}, math::max([0, $b{i}.qr - $bp{i}.runs - $bp{i}.reserved_runs])]) }} ELSE {{ 0 }};
LET $bb{i} = type::record('agent_state', $b{i}.agent_id).run_seq ?? 0;
IF $bn{i} > 0 {{
  UPDATE type::record('usage_period', $b{i}.key) SET reserved_runs += $bn{i} RETURN NONE;
  {count_run}
  INSERT INTO run array::slice([{runs}], 0, $bn{i}) RETURN NONE;
  INSERT INTO run_ref array::slice([{refs}], 0, $bn{i}) RETURN NONE;
}};
"
        );
    }
    sql.push_str("RETURN {");
    let fields: Vec<String> = (chats.iter().enumerate())
        .filter(|(_, g)| !g.known)
        .map(|(i, _)| format!("c{i}: array::len($cn{i}) > 0"))
        .chain((0..settles.len()).map(|i| format!("s{i}: $sd{i}.run_id")))
        .chain((!settles.is_empty()).then(|| "webhooks: $hooks_any".to_string()))
        .chain((0..begins.len()).map(|i| format!("b{i}: {{ n: $bn{i}, base: $bb{i} }}")))
        .collect();
    sql.push_str(&fields.join(", "));
    sql.push_str("};\nCOMMIT;");
    sql
}
