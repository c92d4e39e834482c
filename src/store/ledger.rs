//! Every write that moves a tenant's counters, in one place: chats, run starts, run settlements
//! (also of runs failed as interrupted), and their group commit — they wait here, and one worker
//! per shard writes all that are waiting in one transaction.
//!
//! Run starts write the tenant's `usage_period` row and the agent's `agent_state` row;
//! settlements and chats write `usage_settled`, `usage_daily` and `agent_settled` (totals are
//! the sums of both sides). Concurrent requests of one tenant would otherwise conflict on those
//! rows and run again and again. A tenant's starts always land on the same shard, and its
//! settlements and chats on another (its two lanes), and a shard writes one transaction at a
//! time: within an instance its writes never race each other, while a start and a settlement
//! of one tenant are written side by side (one computes while the other waits for its commit
//! to reach the disk). Instances sharing a database still can race, and a lost race runs the
//! whole transaction again. Nothing waits to fill a batch: a write to an idle shard is made at
//! once by its caller, and the shard's worker takes whatever queued meanwhile when it is free,
//! so a busy server writes many per commit.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Map, Value, json};
use surrealdb::types::{Array, Datetime, RecordId, Value as NativeValue};
use tokio::sync::{mpsc, oneshot};

use super::instances::RunningRun;
use super::records::{
    ChatRecord, Reservation, RunRecord, RunStatus, Step, last_bool, reservation, run_record_id,
};
use super::usage::Period;
use super::{Native, Result, Store, StoreError};

/// Tenants per store are spread over this many shards by a hash of their slug; each shard has
/// two workers, one for run starts and one for settlements and chats.
const SHARDS: usize = 4;
/// Most writes in one transaction.
const MAX_BATCH: usize = 64;

/// What settling a run came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The run was still `running` (or failed as interrupted meanwhile) and is final now,
    /// counted once; `false` when there was nothing to settle.
    pub now: bool,
    /// Its tenant has webhook endpoints, so the settlement may have written deliveries (the
    /// dispatcher need not look for new ones otherwise).
    pub webhooks: bool,
}

/// Whether a tenant among `$hooked` (SurrealQL: the tenants' record ids, see [`hooked`]) has a
/// webhook endpoint: read from the count an event keeps on each tenant's row (schema version
/// 10), which costs a record read where a query of `webhook` cost four times as much.
const HOOKED: &str = "array::max($hooked.webhook_endpoints) > 0";

/// `$hooked` for [`HOOKED`]: the record ids of `tenants`.
fn hooked<'a>(tenants: impl IntoIterator<Item = &'a str>) -> NativeValue {
    NativeValue::Array(
        tenants
            .into_iter()
            .map(|t| NativeValue::RecordId(RecordId::new("tenant", t)))
            .collect::<Vec<_>>()
            .into(),
    )
}

/// Most counter rows [`KnownRows`] holds before it forgets them all (and learns again).
const MAX_KNOWN_ROWS: usize = 100_000;

/// The counter rows (`usage_period`, `usage_settled`, `usage_daily`, `agent_state`,
/// `agent_settled`) this process has seen committed. A batch whose rows are all known updates
/// them (`UPDATE … SET tokens += …`) instead of upserting them: SurrealDB evaluates an `UPSERT`
/// of an existing row at about twice the cost of the same `UPDATE` (`bench_statements … "in one
/// transaction: two counter rows"`). This relies on counter rows never being deleted, which no
/// path of `ares` does (`docs/ARCHITECTURE.md`, invariants): an `UPDATE` of a missing row would
/// count nothing.
#[derive(Default)]
pub(super) struct KnownRows {
    rows: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl KnownRows {
    fn knows(&self, rows: &[String]) -> bool {
        let known = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.iter().all(|r| known.contains(r))
    }

    fn learn(&self, rows: &[String]) {
        let mut known = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() + rows.len() > MAX_KNOWN_ROWS {
            known.clear();
        }
        known.extend(rows.iter().cloned());
    }
}

/// The name [`KnownRows`] holds a counter row by.
fn row(table: &str, key: &str) -> String {
    format!("{table}:{key}")
}

/// One write that waits for its batch.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// Store a finished chat and add its tokens to usage (once, whatever the retries).
    Chat { chat: ChatRecord, period: Period },
    /// Reserve a run within the quotas, number it and store it as `running`.
    Begin {
        period: Period,
        quota_runs: u64,
        quota_tokens: u64,
        run: RunRecord,
    },
    /// Store a `running` run's final state and settle its reservation and counters, with the
    /// steps it had not written yet (`{n, step}`).
    Settle {
        reservation: Reservation,
        run: RunRecord,
        steps: Vec<Value>,
    },
}

impl Op {
    fn tenant(&self) -> &str {
        match self {
            Op::Chat { chat, .. } => &chat.tenant,
            Op::Begin { run, .. } | Op::Settle { run, .. } => &run.tenant,
        }
    }

    /// The lane of its tenant's shard: run starts never write a row that settlements and chats
    /// write, so the two are written side by side.
    fn lane(&self) -> usize {
        match self {
            Op::Begin { .. } => 0,
            Op::Chat { .. } | Op::Settle { .. } => 1,
        }
    }
}

/// What a write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Chat,
    /// The run's number, or `None` when the quota refused it.
    Begin(Option<u64>),
    Settle(Settled),
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<Outcome>>,
}

/// The queues of a store's workers: shard `i`'s lanes are `2i` (starts) and `2i + 1`.
pub(super) struct Ledger {
    shards: Vec<Shard>,
    /// The handle writes go through (one without a ledger).
    direct: Store,
}

struct Shard {
    queue: mpsc::UnboundedSender<Pending>,
    /// Writes waiting in the queue.
    queued: Arc<AtomicUsize>,
    /// Held while a write of this shard runs: one at a time, so they never race each other.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Ledger {
    /// Starts the workers; they write through `store` (a handle without a ledger) and stop
    /// when the last handle with this ledger is dropped.
    pub(super) fn start(store: &Store) -> Arc<Ledger> {
        let shards = (0..SHARDS * 2)
            .map(|_| {
                let (queue, rx) = mpsc::unbounded_channel();
                let shard = Shard {
                    queue,
                    queued: Arc::default(),
                    gate: Arc::default(),
                };
                tokio::spawn(work(
                    store.clone(),
                    rx,
                    Arc::clone(&shard.queued),
                    Arc::clone(&shard.gate),
                ));
                shard
            })
            .collect();
        Arc::new(Ledger {
            shards,
            direct: store.clone(),
        })
    }

    /// Writes `op` at once when its tenant's shard is idle (no hand-off to another task);
    /// otherwise queues it on the shard and waits for its batch to commit.
    pub(super) async fn submit(&self, op: Op) -> Result<Outcome> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        op.tenant().hash(&mut hasher);
        let shard = &self.shards[hasher.finish() as usize % SHARDS * 2 + op.lane()];
        if shard.queued.load(Ordering::Acquire) == 0
            && let Ok(_gate) = Arc::clone(&shard.gate).try_lock_owned()
        {
            return self.direct.write_one(&op).await;
        }
        let stopped = || StoreError::Internal(anyhow::anyhow!("the store's writer stopped"));
        let (reply, answer) = oneshot::channel();
        shard.queued.fetch_add(1, Ordering::AcqRel);
        if shard.queue.send(Pending { op, reply }).is_err() {
            shard.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }
}

async fn work(
    store: Store,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    queued: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Mutex<()>>,
) {
    while let Some(first) = queue.recv().await {
        // Wait for a write made directly by its caller; more queue meanwhile.
        let _gate = gate.lock().await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let ops: Vec<Op> = batch.iter().map(|p| p.op.clone()).collect();
        match store.write_batch(&ops).await {
            Ok(outcomes) => {
                for (p, o) in batch.into_iter().zip(outcomes) {
                    let _ = p.reply.send(Ok(o));
                }
            }
            // One bad write must not fail its neighbours: write them one by one.
            Err(StoreError::Internal(e)) if batch.len() > 1 => {
                tracing::warn!(error = %format!("{e:#}"), writes = batch.len(), "a batch failed; writing its writes one by one");
                for p in batch {
                    let one = store.write_one(&p.op).await;
                    let _ = p.reply.send(one);
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.duplicate()));
                }
            }
        }
    }
}

impl StoreError {
    /// The same error for another caller.
    fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
            StoreError::Conflict(s) => StoreError::Conflict(s.clone()),
            StoreError::Internal(e) => StoreError::Internal(anyhow::anyhow!("{e:#}")),
        }
    }
}

/// The statement that writes the steps not yet written (`$r.events`, bound as `run_event` rows)
/// of a settling run `$r`: one `INSERT` (a loop of `UPSERT`s cost 80 µs more a run,
/// `bench_statements … "8 settling runs: merged with a step each"`).
const EVENTS: &str = "INSERT IGNORE INTO run_event $r.events RETURN NONE;";

/// The statement that writes the steps not yet written (`$r.steps`, `{n, step}`) of an
/// interrupted run amended with its real outcome.
const STEPS: &str = "FOR $e IN $r.steps { UPSERT type::record('run_event', [$r.run_id, $e.n]) SET step = $e.step RETURN NONE; };";

/// Where an op's answer is in the transaction's result.
enum Slot {
    Chat,
    Begin { group: usize, index: usize },
    Settle { group: usize, run_id: String },
}

/// One group of a batch: the ops that share the rows a fragment of the script writes.
struct Group {
    vars: Map<String, Value>,
    /// The ops' rows, bound natively.
    items: Vec<NativeValue>,
    /// The counter rows the group's fragment writes (see [`KnownRows`]).
    counters: Vec<String>,
    /// A settling run of the group has steps to write.
    events: bool,
}

/// A group as the script sees it.
#[derive(Debug, Clone)]
struct Bound {
    size: usize,
    /// The counter rows it writes.
    counters: Vec<String>,
    /// All of them were seen committed: the script updates them.
    known: bool,
    /// A settling run of the group has steps to write.
    events: bool,
}

/// Groups in first-seen order, by key.
#[derive(Default)]
struct Groups {
    index: HashMap<String, usize>,
    list: Vec<Group>,
}

impl Groups {
    /// Adds `item` to the group `key` (made with `vars` and the counter rows it writes when
    /// new); returns the group and the item's position in it.
    fn add(
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
    fn bind(
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

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A count as a native number: SurrealDB's own conversion of a `u64` wraps past `i64::MAX`,
/// where JSON's makes a number the `int` fields refuse, as they should.
fn count(n: u64) -> Value {
    json!(n)
}

/// A chat as its `chat` row, bound natively: stored as it is, with no expression per field.
fn chat_row(chat: &ChatRecord) -> NativeValue {
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
fn begin_row(run: &RunRecord, instance: &str) -> NativeValue {
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
fn settle_row(run: &RunRecord, steps: &[Value]) -> NativeValue {
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
            let n = i64::try_from(e["n"].as_u64().unwrap_or_default()).unwrap_or(i64::MAX);
            let mut event = Native::new();
            event.insert(
                "id",
                RecordId::new(
                    "run_event",
                    Array::from(vec![
                        NativeValue::String(run.id.clone()),
                        NativeValue::Number(n.into()),
                    ]),
                ),
            );
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
fn outbox(tenant: &str, run_id: &str, status: &str) -> String {
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

impl Store {
    /// Writes `op` with whatever else is waiting (or alone, on a handle without a ledger).
    pub(super) async fn write(&self, op: Op) -> Result<Outcome> {
        match &self.ledger {
            Some(ledger) => ledger.submit(op).await,
            None => self.write_one(&op).await,
        }
    }

    /// Writes one op in its own transaction: a run's start or settlement with statements made
    /// for one (cheaper than a batch's loops over one item; same effects), a chat by the
    /// batch's script.
    async fn write_one(&self, op: &Op) -> Result<Outcome> {
        match op {
            // A batch of one: its chat is bound natively, which a statement made for one
            // could not do more cheaply.
            Op::Chat { .. } => Ok(self.write_many(std::slice::from_ref(op)).await?.remove(0)),
            Op::Begin {
                period,
                quota_runs,
                quota_tokens,
                run,
            } => {
                let r = reservation(&run.tenant, period, run.started_at);
                let counters = [
                    row("usage_period", &r.period_key),
                    row("agent_state", &run.agent_id),
                ];
                let known = self.counters.knows(&counters);
                // The period's row is made on its first run (an UPSERT ignores its condition
                // when it creates, and `WHERE false` leaves an existing row unwritten), then the
                // reservation is a conditional update of it.
                let (make_period, count_run) = if known {
                    (
                        "",
                        "UPDATE type::record('agent_state', $r.agent_id) SET run_seq += 1",
                    )
                } else {
                    (
                        "UPSERT type::record('usage_period', $key) SET tenant = $r.tenant, start = $start \
                          WHERE false RETURN NONE;",
                        "UPSERT type::record('agent_state', $r.agent_id) SET tenant = $r.tenant, name = $r.agent, \
                          created_at = created_at ?? time::now(), run_seq += 1",
                    )
                };
                let sql = format!(
                    "BEGIN; {make_period} \
                    LET $spent = type::record('usage_settled', $key).tokens ?? 0; \
                    LET $ok = array::len((UPDATE type::record('usage_period', $key) SET reserved_runs += 1 \
                      WHERE runs + reserved_runs < $qr AND tokens + $spent < $qt RETURN VALUE reserved_runs)) > 0; \
                    LET $seq = IF $ok {{ ({count_run} RETURN VALUE run_seq)[0] }} ELSE {{ NONE }}; \
                    IF $ok {{ CREATE type::record('run', [$r.agent_id, $seq]) CONTENT object::extend($row.run, {{ seq: $seq }}) \
                      RETURN NONE; \
                      INSERT INTO run_ref object::extend($row.by_id, {{ seq: $seq }}) RETURN NONE; }}; \
                    RETURN $seq; \
                    COMMIT;"
                );
                let vars = json!({
                    "r": {"tenant": run.tenant, "agent": run.agent, "agent_id": run.agent_id},
                    "key": r.period_key, "start": r.start,
                    "qr": quota_runs, "qt": quota_tokens,
                });
                let mut native = Native::new();
                native.insert("row", begin_row(run, &self.instance));
                let out = self.run_retrying_native(&sql, vars, native).await?;
                // The last statement's value: the run's number, or nothing when refused.
                let seq = out.iter().rev().find_map(|rows| match rows.as_slice() {
                    [v] => v.as_u64(),
                    _ => None,
                });
                if !known && seq.is_some() {
                    self.counters.learn(&counters);
                }
                Ok(Outcome::Begin(seq))
            }
            Op::Settle {
                reservation,
                run,
                steps,
            } => {
                let counters = [
                    row("usage_settled", &reservation.period_key),
                    row("usage_daily", &reservation.day_key),
                    row("agent_settled", &run.agent_id),
                ];
                let known = self.counters.knows(&counters);
                let events = if steps.is_empty() { "" } else { EVENTS };
                let (write, settled, daily, agent) = if known {
                    ("UPDATE", "", "", "")
                } else {
                    (
                        "UPSERT",
                        "tenant = $tenant, start = $start,",
                        "tenant = $tenant, date = $date,",
                        "tenant = $tenant,",
                    )
                };
                let sql = format!(
                    "BEGIN; \
                    LET $hooks_any = {HOOKED}; \
                    LET $done = (UPDATE $r.rid MERGE $r.patch WHERE status = 'running' RETURN VALUE run_id); \
                    IF array::len($done) > 0 {{ \
                      {events} \
                      {write} type::record('usage_settled', $period) SET {settled} runs += 1, \
                        tokens += $r.patch.tokens_used RETURN NONE; \
                      {write} type::record('usage_daily', $day) SET {daily} runs += 1, tokens += $r.patch.tokens_used RETURN NONE; \
                      {write} type::record('agent_settled', $agent_id) SET {agent} total_runs += 1, \
                        completed_runs += $r.completed, last_run = $r.started_at RETURN NONE; \
                      IF $hooks_any {{ {} }}; \
                    }}; \
                    RETURN {{ now: array::len($done) > 0, webhooks: $hooks_any }}; \
                    COMMIT;",
                    outbox("$tenant", "$r.run_id", "$r.patch.status")
                );
                let vars = json!({
                    "period": reservation.period_key, "start": reservation.start, "day": reservation.day_key,
                    "tenant": reservation.tenant, "date": reservation.date,
                    "agent_id": run.agent_id,
                });
                let mut native = Native::new();
                native.insert("hooked", hooked([reservation.tenant.as_str()]));
                native.insert("r", settle_row(run, steps));
                let answer = self.run_retrying_native(&sql, vars, native).await?;
                let answer = answer.iter().rev().find_map(|rows| rows.first());
                let flag = |name: &str| answer.and_then(|a| a[name].as_bool()).unwrap_or(false);
                if !known && flag("now") {
                    self.counters.learn(&counters);
                }
                Ok(Outcome::Settle(Settled {
                    now: flag("now"),
                    webhooks: flag("webhooks"),
                }))
            }
        }
    }

    /// Writes `ops` in one transaction and answers each, in order. Chats are stored and
    /// counted once per chat id; runs settle once; run starts are granted in order while the
    /// quotas allow, numbered consecutively per agent.
    pub(super) async fn write_batch(&self, ops: &[Op]) -> Result<Vec<Outcome>> {
        match ops {
            [op] => Ok(vec![self.write_one(op).await?]),
            _ => self.write_many(ops).await,
        }
    }

    /// [`Store::write_batch`] by the batch's script, whatever the number of ops.
    async fn write_many(&self, ops: &[Op]) -> Result<Vec<Outcome>> {
        let (mut chats, mut settles, mut begins) =
            (Groups::default(), Groups::default(), Groups::default());
        let mut seen = std::collections::HashSet::new();
        let mut slots = Vec::with_capacity(ops.len());
        for op in ops {
            slots.push(match op {
                Op::Chat { chat, period } => {
                    let r = reservation(&chat.tenant, period, chat.created_at);
                    // The same chat twice in one batch would be counted twice.
                    if seen.insert(("chat", chat.id.as_str())) {
                        let vars = || {
                            let counters = vec![
                                row("usage_settled", &r.period_key),
                                row("usage_daily", &r.day_key),
                            ];
                            let vars = json!({"tenant": chat.tenant, "period": r.period_key,
                                "day": r.day_key, "date": r.date, "start": r.start});
                            (obj(vars), counters)
                        };
                        chats.add(
                            format!("{}\n{}", r.period_key, r.day_key),
                            vars,
                            chat_row(chat),
                        );
                    }
                    Slot::Chat
                }
                Op::Settle {
                    reservation: r,
                    run,
                    steps,
                } => {
                    let key = format!("{}\n{}\n{}", r.period_key, r.day_key, run.agent_id);
                    if seen.insert(("run", run.id.as_str())) {
                        let vars = || {
                            let counters = vec![
                                row("usage_settled", &r.period_key),
                                row("usage_daily", &r.day_key),
                                row("agent_settled", &run.agent_id),
                            ];
                            let vars = json!({"tenant": r.tenant, "period": r.period_key,
                                "start": r.start, "day": r.day_key, "date": r.date,
                                "agent_id": run.agent_id});
                            (obj(vars), counters)
                        };
                        let (g, _) = settles.add(key.clone(), vars, settle_row(run, steps));
                        settles.list[g].events |= !steps.is_empty();
                    }
                    Slot::Settle {
                        group: settles.index[&key],
                        run_id: run.id.clone(),
                    }
                }
                Op::Begin {
                    period,
                    quota_runs,
                    quota_tokens,
                    run,
                } => {
                    let r = reservation(&run.tenant, period, run.started_at);
                    let key = format!("{}\n{}", r.period_key, run.agent_id);
                    let vars = || {
                        let counters = vec![
                            row("usage_period", &r.period_key),
                            row("agent_state", &run.agent_id),
                        ];
                        let vars = json!({"tenant": run.tenant, "key": r.period_key,
                            "agent": run.agent, "agent_id": run.agent_id, "start": r.start,
                            "qr": quota_runs, "qt": quota_tokens});
                        (obj(vars), counters)
                    };
                    let (group, index) = begins.add(key, vars, begin_row(run, &self.instance));
                    // A group takes the smallest quotas its callers saw (they may have read the
                    // tenant before and after a quota change).
                    let g = &mut begins.list[group].vars;
                    for (name, q) in [("qr", quota_runs), ("qt", quota_tokens)] {
                        if g[name].as_u64().is_some_and(|v| *q < v) {
                            g.insert(name.into(), json!(q));
                        }
                    }
                    Slot::Begin { group, index }
                }
            });
        }

        let mut vars = Map::new();
        let tenants: std::collections::BTreeSet<&str> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Settle { run, .. } => Some(run.tenant.as_str()),
                _ => None,
            })
            .collect();
        let mut native = Native::new();
        if !tenants.is_empty() {
            native.insert("hooked", hooked(tenants));
        }
        let known = &self.counters;
        let chats = chats.bind("c", known, &mut vars, &mut native);
        let settles = settles.bind("s", known, &mut vars, &mut native);
        let begins = begins.bind("b", known, &mut vars, &mut native);
        let sql = script(&chats, &settles, &begins);
        let out = self
            .run_retrying_native(&sql, Value::Object(vars), native)
            .await?;
        let answer = out
            .into_iter()
            .rev()
            .find_map(|rows| rows.into_iter().next())
            .unwrap_or(Value::Null);
        // The counter rows this transaction wrote exist from now on.
        let wrote = |prefix: &str, i: usize| match &answer[format!("{prefix}{i}")] {
            Value::Bool(b) => *b,
            Value::Array(ids) => !ids.is_empty(),
            g => g["n"].as_u64().is_some_and(|n| n > 0),
        };
        for (prefix, groups) in [("c", &chats), ("s", &settles), ("b", &begins)] {
            for (i, g) in groups.iter().enumerate() {
                if !g.known && wrote(prefix, i) {
                    known.learn(&g.counters);
                }
            }
        }

        slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Chat => Ok(Outcome::Chat),
                Slot::Settle { group, run_id } => {
                    let now = answer[format!("s{group}")]
                        .as_array()
                        .is_some_and(|ids| ids.iter().any(|id| id.as_str() == Some(&run_id)));
                    Ok(Outcome::Settle(Settled {
                        now,
                        webhooks: answer["webhooks"].as_bool().unwrap_or(false),
                    }))
                }
                Slot::Begin { group, index } => {
                    let g = &answer[format!("b{group}")];
                    match (g["n"].as_u64(), g["base"].as_u64()) {
                        (Some(n), Some(base)) => {
                            let index = index as u64;
                            Ok(Outcome::Begin((index < n).then_some(base + index + 1)))
                        }
                        _ => Err(StoreError::Internal(anyhow::anyhow!(
                            "a batch of writes answered without run numbers: {answer}"
                        ))),
                    }
                }
            })
            .collect()
    }
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
fn script(chats: &[Bound], settles: &[Bound], begins: &[Bound]) -> String {
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

impl Store {
    /// Starts a run: in one transaction, takes a run from the tenant's quota for `period` —
    /// unless the period's runs (settled and in flight) have reached `quota_runs` or its settled
    /// tokens have reached `quota_tokens` — numbers the run among its agent's runs (sets
    /// `run.seq`) and stores it as `running`, so a crash leaves a trace to recover. `None` when
    /// the quota refuses; nothing is stored then. Concurrent callers, on any number of
    /// instances, never overshoot the run quota (a lost write race is run again).
    #[tracing::instrument(skip(self, period, run), fields(run = %run.id))]
    pub async fn begin_run(
        &self,
        period: &Period,
        quota_runs: u64,
        quota_tokens: u64,
        run: &mut RunRecord,
    ) -> Result<Option<Reservation>> {
        let r = reservation(&run.tenant, period, run.started_at);
        let op = Op::Begin {
            period: *period,
            quota_runs,
            quota_tokens,
            run: run.clone(),
        };
        match self.write(op).await? {
            Outcome::Begin(Some(seq)) => {
                run.seq = seq;
                Ok(Some(r))
            }
            Outcome::Begin(None) => Ok(None),
            other => Err(StoreError::Internal(anyhow::anyhow!(
                "a run start answered {other:?}"
            ))),
        }
    }

    /// Stores the final state of a run and, in the same transaction, settles its reservation
    /// and updates usage and the agent's counters. Idempotent: only a `running` run is settled,
    /// so a retried call never counts twice. A run that another instance already failed as
    /// interrupted (its lease ran out while this one was cut off from the database) gets its
    /// real outcome and tokens, once. `false` when there was nothing to settle.
    #[tracing::instrument(skip(self, run, reservation), fields(run = %run.id))]
    ///
    /// `steps` are the run's steps not written yet (numbered): they are written in the same
    /// transaction, so a run that settles has all its steps.
    pub async fn finish_run(
        &self,
        reservation: &Reservation,
        run: &RunRecord,
        steps: &[(u64, Step)],
    ) -> Result<Settled> {
        let steps: Vec<Value> = steps
            .iter()
            .map(|(n, step)| json!({"n": n, "step": step}))
            .collect();
        let op = Op::Settle {
            reservation: reservation.clone(),
            run: run.clone(),
            steps: steps.clone(),
        };
        // The usual case: the run is still `running`; it settles with its counters.
        match self.write(op).await? {
            Outcome::Settle(settled) if settled.now => return Ok(settled),
            Outcome::Settle(_) => {}
            other => {
                return Err(StoreError::Internal(anyhow::anyhow!(
                    "a run's settlement answered {other:?}"
                )));
            }
        }
        let mut r = json!(run);
        r["steps"] = Value::Array(steps);
        let vars = json!({
            "r": r, "period": reservation.period_key, "start": reservation.start, "day": reservation.day_key,
            "tenant": reservation.tenant, "date": reservation.date,
            "completed": u64::from(run.status == RunStatus::Completed),
        });
        // Failed as interrupted meanwhile (already counted as a run): the real outcome and
        // its tokens replace the interruption, once.
        let amend = format!(
            "BEGIN; \
            LET $done = (UPDATE type::record('run', [$r.agent_id, $r.seq]) SET status = $r.status, \
              output = $r.output ?? NONE, error = $r.error ?? NONE, \
              finished_at = <option<datetime>>($r.finished_at ?? NONE), duration_ms = $r.duration_ms ?? NONE, \
              tokens_used = $r.tokens_used, reaped = NONE WHERE status = 'failed' AND reaped = true RETURN VALUE run_id); \
            IF array::len($done) > 0 {{ \
              UPSERT type::record('usage_settled', $period) SET tenant = $tenant, start = $start, tokens += $r.tokens_used; \
              UPSERT type::record('usage_daily', $day) SET tenant = $tenant, date = $date, tokens += $r.tokens_used; \
              UPSERT type::record('agent_settled', $r.agent_id) SET tenant = $tenant, completed_runs += $completed; \
              {STEPS} \
              {} \
            }}; \
            RETURN array::len($done) > 0; \
            COMMIT;",
            outbox("$tenant", "$r.run_id", "$r.status")
        );
        let now = last_bool(&self.run_retrying(&amend, vars).await?);
        Ok(Settled { now, webhooks: now })
    }

    /// Stores a finished chat and adds its tokens to usage, in one transaction. Idempotent: a
    /// chat already stored is not counted again.
    #[tracing::instrument(skip(self, chat, period), fields(chat = %chat.id))]
    pub async fn record_chat(&self, chat: &ChatRecord, period: &Period) -> Result<()> {
        let op = Op::Chat {
            chat: chat.clone(),
            period: *period,
        };
        self.write(op).await?;
        Ok(())
    }

    /// Fails `run` as interrupted (its instance stopped, or it is overdue), settling its
    /// reservation and counting it in usage like any failed run, unless it settled meanwhile.
    /// Whether it was settled here.
    pub(super) async fn settle_interrupted(
        &self,
        run: &RunningRun,
        period_start_day: u32,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool> {
        let period = Period::containing(run.started_at, period_start_day);
        let r = reservation(&run.tenant, &period, run.started_at);
        let sql = format!(
            "BEGIN; \
            LET $done = (UPDATE type::record('run', [$agent_id, $seq]) SET status = 'failed', error = $error, \
              finished_at = time::now(), duration_ms = <int>$duration_ms, reaped = true \
              WHERE status = 'running' RETURN VALUE run_id); \
            IF array::len($done) > 0 {{ \
              UPSERT type::record('usage_settled', $period) SET tenant = $tenant, start = $start, runs += 1; \
              UPSERT type::record('usage_daily', $day) SET tenant = $tenant, date = $date, runs += 1; \
              UPSERT type::record('agent_settled', $agent_id) SET tenant = $tenant, total_runs += 1, \
                last_run = IF last_run = NONE OR last_run < <datetime>$started {{ <datetime>$started }} ELSE {{ last_run }}; \
              {} \
            }}; \
            RETURN array::len($done); \
            COMMIT;",
            outbox("$tenant", "$run_id", "'failed'")
        );
        let vars = json!({
            "agent_id": run.agent_id, "seq": run.seq, "error": run.reason(now), "run_id": run.run_id,
            "duration_ms": (now - run.started_at).num_milliseconds().max(0),
            "period": r.period_key, "start": r.start, "day": r.day_key, "date": r.date,
            "tenant": run.tenant, "started": run.started_at,
        });
        let out = self.run_retrying(&sql, vars).await?;
        let settled = out
            .iter()
            .rev()
            .find_map(|rows| match rows.as_slice() {
                [Value::Number(n)] => n.as_u64(),
                _ => None,
            })
            .unwrap_or(0);
        Ok(settled > 0)
    }
}

impl Store {
    /// Creates `n` completed runs of one agent started today, in batches, with their counters
    /// and usage, each with `text_bytes` of text as its input's `message` and its output's
    /// `response` (benchmarks and load tests: `bench/fill.rs`). Not used by the server.
    pub async fn generate_runs(
        &self,
        tenant: &str,
        agent: &str,
        agent_id: &str,
        period: &Period,
        n: u64,
        text_bytes: usize,
    ) -> Result<()> {
        const BATCH: u64 = 5_000;
        // Large runs go in smaller transactions.
        let batch = BATCH.min((4 << 20) / (text_bytes as u64 + 1)).max(1);
        let text = "x".repeat(text_bytes);
        let now = chrono::Utc::now();
        let r = reservation(tenant, period, now);
        let mut done = 0;
        while done < n {
            let count = batch.min(n - done);
            let sql = "BEGIN; \
                LET $base = (UPSERT type::record('agent_state', $agent_id) SET tenant = $tenant, name = $agent, \
                  created_at = created_at ?? time::now(), run_seq += $count RETURN run_seq)[0].run_seq - $count; \
                FOR $i IN 0..$count { \
                  LET $id = rand::uuid::v7(); \
                  CREATE type::record('run', [$agent_id, $base + $i + 1]) CONTENT { run_id: <string>$id, seq: $base + $i + 1, \
                    tenant: $tenant, agent: $agent, \
                    agent_id: $agent_id, status: 'completed', input: {message: $text}, output: {response: $text}, \
                    started_at: time::now(), finished_at: time::now(), duration_ms: 1, tokens_used: 10 } RETURN NONE; \
                  CREATE type::record('run_ref', <string>$id) SET agent_id = $agent_id, seq = $base + $i + 1, \
                    tenant = $tenant RETURN NONE; \
                }; \
                UPSERT type::record('usage_period', $period) SET tenant = $tenant, start = $start, runs += $count, tokens += $count * 10; \
                UPSERT type::record('usage_daily', $day) SET tenant = $tenant, date = $date, runs += $count, tokens += $count * 10; \
                UPSERT type::record('agent_state', $agent_id) SET tenant = $tenant, name = $agent, \
                  created_at = created_at ?? time::now(), total_runs += $count, completed_runs += $count, last_run = time::now(); \
                COMMIT;";
            let vars = json!({
                "count": count, "tenant": tenant, "agent": agent, "agent_id": agent_id,
                "period": r.period_key, "day": r.day_key, "date": r.date,
                "start": r.start, "text": text,
            });
            self.run_retrying(sql, vars).await?;
            done += count;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::super::testing::{finished, run, store};
    use super::super::{ChatRecord, Period};
    use super::{Op, Outcome, Settled};

    fn chat(id: &str, tokens: u64) -> ChatRecord {
        ChatRecord {
            id: id.into(),
            tenant: "acme".into(),
            model: "m".into(),
            finish_reason: "stop".into(),
            tokens_used: tokens,
            created_at: Utc::now(),
        }
    }

    /// Tenant `acme`'s row (where its endpoints are counted) and an endpoint of it, for every
    /// event.
    async fn webhook_of_acme(store: &super::Store) {
        store
            .run(
                "UPSERT tenant:acme SET slug = 'acme', name = 'Acme', quota_runs = 10, quota_tokens = 1000, \
                 created_at = time::now(); \
                 CREATE webhook:w CONTENT { webhook_id: 'w', tenant: 'acme', url: 'https://example.com/h', \
                 events: ['*'], secret: 's', created_at: time::now() }",
                json!({}),
            )
            .await
            .unwrap();
    }

    /// The period's runs settled, runs in flight and tokens, as its two rows count them.
    async fn usage_row(store: &super::Store, period: &Period) -> serde_json::Value {
        let key = format!("acme|{}", period.start.date_naive());
        store
            .run(
                "LET $p = type::record('usage_period', $k).{runs, reserved_runs, tokens}; \
                 LET $s = type::record('usage_settled', $k).{runs, tokens}; \
                 RETURN { runs: ($p.runs ?? 0) + ($s.runs ?? 0), \
                   reserved_runs: ($p.reserved_runs ?? 0) - ($s.runs ?? 0), \
                   tokens: ($p.tokens ?? 0) + ($s.tokens ?? 0) };",
                json!({"k": key}),
            )
            .await
            .unwrap()
            .pop()
            .unwrap()[0]
            .clone()
    }

    #[tokio::test]
    async fn one_batch_grants_in_order_within_the_quota_and_counts_each_chat_once() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        let mut ops: Vec<Op> = ["a", "b", "a"]
            .iter()
            .map(|id| Op::Chat {
                chat: chat(id, 5),
                period,
            })
            .collect();
        let runs: Vec<_> = (0..5).map(|_| run("acme")).collect();
        ops.extend(runs.iter().map(|r| Op::Begin {
            period,
            quota_runs: 3,
            quota_tokens: 1000,
            run: r.clone(),
        }));
        let out = store.write_batch(&ops).await.unwrap();
        assert_eq!(out[..3], [Outcome::Chat; 3]);
        assert_eq!(
            out[3..],
            [
                Outcome::Begin(Some(1)),
                Outcome::Begin(Some(2)),
                Outcome::Begin(Some(3)),
                Outcome::Begin(None),
                Outcome::Begin(None)
            ]
        );
        // Each granted run is stored under its number and found by its id; a refused one is
        // not stored.
        for (i, r) in runs.iter().enumerate() {
            let found = store.run_by_id("acme", &r.id).await.unwrap();
            let seq = found.map(|f| (f.seq, f.status));
            let want = (i < 3).then_some((i as u64 + 1, super::RunStatus::Running));
            assert_eq!(seq, want, "run {i}");
        }
        assert_eq!(
            usage_row(&store, &period).await,
            json!({"runs": 0, "reserved_runs": 3, "tokens": 10}),
            "chat `a` counted once"
        );
        // The same chat again, in a later batch (alone, or beside a new one), is not counted
        // again.
        for chats in [vec![chat("b", 5)], vec![chat("b", 5), chat("c", 3)]] {
            let ops: Vec<Op> = chats
                .into_iter()
                .map(|chat| Op::Chat { chat, period })
                .collect();
            store.write_batch(&ops).await.unwrap();
        }
        assert_eq!(
            usage_row(&store, &period).await["tokens"],
            13,
            "only `c` added"
        );

        // Settling two runs in one batch, one of them twice, counts each once; the steps
        // they had not written are written with them.
        let reservation = super::reservation("acme", &period, runs[0].started_at);
        let step = super::Step {
            kind: super::super::StepKind::Model,
            name: "m".into(),
            arguments: None,
            result: None,
            tokens: 7,
            started_at: runs[0].started_at,
            duration_ms: 1,
            error: None,
        };
        let settle = |i: usize, seq: u64| Op::Settle {
            reservation: reservation.clone(),
            run: {
                let mut r = finished(runs[i].clone(), 7);
                r.seq = seq;
                r
            },
            steps: vec![json!({"n": 1, "step": step}), json!({"n": 2, "step": step})],
        };
        let out = store
            .write_batch(&[settle(0, 1), settle(1, 2), settle(0, 1)])
            .await
            .unwrap();
        let settled = Outcome::Settle(Settled {
            now: true,
            webhooks: false,
        });
        assert_eq!(out, [settled; 3]);
        for run in &runs[..2] {
            let steps = store.steps_after(&run.id, 0).await.unwrap();
            assert_eq!(steps, [(1, step.clone()), (2, step.clone())]);
        }
        let out = store.write_batch(&[settle(1, 2)]).await.unwrap();
        let nothing = Settled {
            now: false,
            webhooks: false,
        };
        assert_eq!(out, [Outcome::Settle(nothing)], "already settled");
        assert_eq!(
            usage_row(&store, &period).await,
            json!({"runs": 2, "reserved_runs": 1, "tokens": 27})
        );
        // Agent counters, usage and runs agree; the third run is still running, on an
        // instance that holds no lease.
        let report = store.check(1).await.unwrap();
        let found: Vec<_> = report.violations.iter().map(|v| v.invariant).collect();
        assert_eq!(found, ["orphaned_run"], "{:?}", report.violations);

        // Once the tenant has a webhook endpoint, settlements say so (the dispatcher is woken
        // only then), alone or in a batch.
        webhook_of_acme(&store).await;
        let hooked = Settled {
            now: true,
            webhooks: true,
        };
        let out = store.write_batch(&[settle(2, 3)]).await.unwrap();
        assert_eq!(out, [Outcome::Settle(hooked)]);
        let mut again = settle(2, 3);
        if let Op::Settle { run, .. } = &mut again {
            run.id = "not-settled".into();
        }
        let out = store
            .write_batch(&[
                again,
                Op::Chat {
                    chat: chat("z", 1),
                    period,
                },
            ])
            .await
            .unwrap();
        let already = Settled {
            now: false,
            webhooks: true,
        };
        assert_eq!(out, [Outcome::Settle(already), Outcome::Chat]);

        // Once its last endpoint is gone, they no longer do.
        assert!(store.delete_webhook("acme", "w").await.unwrap());
        let mut later = settle(2, 3);
        if let Op::Settle { run, .. } = &mut later {
            run.id = "not-settled-either".into();
        }
        let out = store.write_batch(&[later]).await.unwrap();
        assert_eq!(out, [Outcome::Settle(nothing)]);
    }

    /// Counter rows a batch wrote are known from then on, and later batches update them
    /// (without `UPSERT`) to the same totals.
    #[tokio::test]
    async fn counter_rows_once_written_are_updated_to_the_same_totals() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        let runs: Vec<_> = (0..4).map(|_| run("acme")).collect();
        let r = super::reservation("acme", &period, runs[0].started_at);
        let rows = |table: &str, key: &str| vec![super::row(table, key)];
        let (settled, daily) = (
            rows("usage_settled", &r.period_key),
            rows("usage_daily", &r.day_key),
        );
        let (period_row, agent) = (
            rows("usage_period", &r.period_key),
            rows("agent_state", &runs[0].agent_id),
        );
        let agent_settled = rows("agent_settled", &runs[0].agent_id);
        let begin = |r: &super::RunRecord| Op::Begin {
            period,
            quota_runs: 10,
            quota_tokens: 1000,
            run: r.clone(),
        };
        let chats = |ids: &[&str]| -> Vec<Op> {
            ids.iter()
                .map(|id| Op::Chat {
                    chat: chat(id, 5),
                    period,
                })
                .collect()
        };
        let settle = |i: usize| Op::Settle {
            reservation: r.clone(),
            run: {
                let mut f = finished(runs[i].clone(), 7);
                f.seq = i as u64 + 1;
                f
            },
            steps: vec![],
        };
        let known = |rows: &[String]| store.counters.knows(rows);

        // A chat already stored adds no row: nothing is learned from it.
        store.write_batch(&chats(&["x"])).await.unwrap();
        assert!(known(&settled) && known(&daily));
        assert!(!known(&period_row) && !known(&agent));
        let mut ops = chats(&["y", "x"]);
        ops.extend(runs[..2].iter().map(begin));
        store.write_batch(&ops).await.unwrap();
        assert!(known(&period_row) && known(&agent));
        let mut ops = chats(&["z", "y"]);
        ops.extend(runs[2..].iter().map(begin));
        let out = store.write_batch(&ops).await.unwrap();
        assert_eq!(out[2..], [Outcome::Begin(Some(3)), Outcome::Begin(Some(4))]);

        assert!(!known(&agent_settled));
        store.write_batch(&[settle(0), settle(1)]).await.unwrap();
        assert!(known(&agent_settled));
        store
            .write_batch(&[settle(2), settle(3), settle(0)])
            .await
            .unwrap();
        // A start and a settlement written alone (statements of their own), on known rows.
        let (res, fifth) = start(&store, &period, "acme", (10, 1000)).await.unwrap();
        assert_eq!(fifth.seq, 5);
        let done = store.finish_run(&res, &finished(fifth, 7), &[]).await;
        assert!(done.unwrap().now);

        assert_eq!(
            usage_row(&store, &period).await,
            json!({"runs": 5, "reserved_runs": 0, "tokens": 50}),
            "three chats of 5 tokens, five runs of 7"
        );
        let report = store.check(1).await.unwrap();
        assert_eq!(report.violations, [], "{:?}", report.violations);
        let state = store
            .agent_states("acme", &[(runs[0].agent_id.clone(), runs[0].agent.clone())])
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            (state.total_runs, state.completed_runs, state.run_seq),
            (5, 5, 5)
        );
    }

    /// A group whose counter rows are known updates them; the others upsert them.
    #[test]
    fn known_groups_update_their_counters_and_the_others_upsert_them() {
        let group = |known| super::Bound {
            size: 2,
            counters: vec![],
            known,
            events: true,
        };
        for known in [false, true] {
            let g = [group(known)];
            let sql = super::script(&g, &g, &g);
            let count = |verb: &str| {
                ["usage_", "agent_"]
                    .iter()
                    .map(|t| sql.matches(&format!("{verb} type::record('{t}")).count())
                    .sum::<usize>()
            };
            // Two rows of the chats, three of the settlement, the agent's number, and the
            // period's row (made if missing; known, it is only updated by the reservation,
            // either way).
            assert_eq!(count("UPSERT"), if known { 0 } else { 7 }, "{sql}");
            assert_eq!(count("UPDATE"), if known { 7 } else { 1 }, "{sql}");
        }
    }

    #[tokio::test]
    async fn runs_settled_in_one_batch_each_write_their_webhook_event() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        webhook_of_acme(&store).await;
        let runs: Vec<_> = (0..3).map(|_| run("acme")).collect();
        let begins: Vec<Op> = runs
            .iter()
            .map(|r| Op::Begin {
                period,
                quota_runs: 10,
                quota_tokens: 1000,
                run: r.clone(),
            })
            .collect();
        store.write_batch(&begins).await.unwrap();
        let reservation = super::reservation("acme", &period, runs[0].started_at);
        let settles: Vec<Op> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| Op::Settle {
                reservation: reservation.clone(),
                run: {
                    let mut r = finished(r.clone(), 1);
                    r.seq = i as u64 + 1;
                    r
                },
                steps: Vec::new(),
            })
            .collect();
        let out = store.write_batch(&settles).await.unwrap();
        let settled = Outcome::Settle(Settled {
            now: true,
            webhooks: true,
        });
        assert_eq!(out, [settled; 3]);
        let events = store
            .run(
                "SELECT VALUE run_id FROM webhook_delivery WHERE event_type = 'run.completed'",
                json!({}),
            )
            .await
            .unwrap();
        let mut got: Vec<&str> = events[0].iter().filter_map(|v| v.as_str()).collect();
        got.sort();
        let mut want: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        want.sort();
        assert_eq!(got, want, "one delivery per settled run");
    }

    #[tokio::test]
    async fn concurrent_writers_share_batches_and_never_overshoot() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        store
                            .record_chat(&chat(&format!("c{i}"), 2), &period)
                            .await
                            .map(|_| None)
                    } else {
                        let mut r = run("acme");
                        store
                            .begin_run(&period, 7, 1000, &mut r)
                            .await
                            .map(|res| res.map(|_| r.seq))
                    }
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            if let Some(seq) = t.await.unwrap().unwrap() {
                seqs.push(seq);
            }
        }
        seqs.sort();
        assert_eq!(
            seqs,
            (1..=7).collect::<Vec<_>>(),
            "7 granted, numbered 1 to 7"
        );
        assert_eq!(
            usage_row(&store, &period).await,
            json!({"runs": 0, "reserved_runs": 7, "tokens": 40})
        );
    }

    #[tokio::test]
    async fn a_bad_write_fails_alone() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        // Tokens beyond the database's integers: this chat cannot be stored.
        let chats = (0..9).map(|i| chat(&format!("c{i}"), if i == 4 { u64::MAX } else { 1 }));
        let results = futures_util::future::join_all(chats.map(|c| {
            let store = store.clone();
            async move { store.record_chat(&c, &period).await }
        }))
        .await;
        let failed: Vec<usize> = (0..9).filter(|i| results[*i].is_err()).collect();
        assert_eq!(failed, [4]);
        assert_eq!(usage_row(&store, &period).await["tokens"], 8);
    }

    /// A run of `tenant` started under the quotas, with its number, or `None` when refused.
    async fn start(
        store: &super::Store,
        period: &Period,
        tenant: &str,
        quotas: (u64, u64),
    ) -> Option<(super::Reservation, super::RunRecord)> {
        let mut r = run(tenant);
        let reserved = store
            .begin_run(period, quotas.0, quotas.1, &mut r)
            .await
            .unwrap();
        reserved.map(|res| (res, r))
    }

    /// Before version 9 of the schema (and on an instance of the previous version during a
    /// rolling upgrade) a settlement counted on the rows a start writes; such counts still
    /// count, beside the settlements of this version.
    #[tokio::test]
    async fn settlements_counted_the_previous_way_still_count() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        let (_, old) = start(&store, &period, "acme", (3, 100)).await.unwrap();
        let (res, new) = start(&store, &period, "acme", (3, 100)).await.unwrap();
        // The first settles as the previous version settled a run, with 6 tokens.
        store
            .run(
                "BEGIN; \
                 UPDATE type::record('run', [$r.agent_id, $r.seq]) SET status = 'completed', \
                   output = { response: 'ok' }, finished_at = time::now(), duration_ms = 1, tokens_used = 6; \
                 UPDATE type::record('usage_period', $res.period_key) SET runs += 1, reserved_runs -= 1, tokens += 6; \
                 UPSERT type::record('usage_daily', $res.day_key) SET tenant = 'acme', date = $res.date, \
                   runs += 1, tokens += 6; \
                 UPDATE type::record('agent_state', $r.agent_id) SET total_runs += 1, completed_runs += 1, \
                   last_run = <datetime>$r.started_at; \
                 COMMIT;",
                json!({"r": old, "res": {"period_key": res.period_key, "day_key": res.day_key, "date": res.date}}),
            )
            .await
            .unwrap();
        // The second settles as this version does, with 4.
        assert!(
            store
                .finish_run(&res, &finished(new, 4), &[])
                .await
                .unwrap()
                .now
        );

        assert_eq!(
            usage_row(&store, &period).await,
            json!({"runs": 2, "reserved_runs": 0, "tokens": 10})
        );
        let report = store.check(1).await.unwrap();
        assert_eq!(report.violations, [], "{:?}", report.violations);
        let state = store
            .agent_states("acme", &[("acme-echo".into(), "echo".into())])
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            (state.total_runs, state.completed_runs, state.run_seq),
            (2, 2, 2)
        );
        // Both runs and both sets of tokens count against the quotas.
        assert!(!store.tokens_left("acme", &period, 10).await.unwrap());
        assert!(store.tokens_left("acme", &period, 11).await.unwrap());
        assert!(
            start(&store, &period, "acme", (3, 10)).await.is_none(),
            "10 tokens spent"
        );
        assert!(start(&store, &period, "acme", (3, 11)).await.is_some());
        assert!(
            start(&store, &period, "acme", (3, 11)).await.is_none(),
            "3 runs started"
        );
        // Authentication reads the period's tokens with the tenant, from both rows.
        let (_, key) = store
            .create_tenant("acme", "Acme", 3, 11, None, "k")
            .await
            .unwrap()
            .unwrap();
        let (_, tenant) = store
            .authenticate(&key.secret, period.start.date_naive(), Utc::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tenant.period_tokens, Some(10));
    }

    #[tokio::test]
    async fn a_new_period_reserves_within_the_quotas_and_never_over() {
        let store = store().await;
        let period = Period::containing(Utc::now(), 1);
        // Zero quotas refuse the first run of a period whose usage row does not exist yet.
        for quotas in [(0, 100), (5, 0)] {
            assert!(
                start(&store, &period, "zero", quotas).await.is_none(),
                "{quotas:?}"
            );
        }
        // A quota of 2: the first run creates the period, the second fits, the third is refused.
        let mut seqs = Vec::new();
        for _ in 0..2 {
            let (_, r) = start(&store, &period, "two", (2, 100)).await.unwrap();
            seqs.push(r.seq);
        }
        assert_eq!(seqs, [1, 2], "runs are numbered in order");
        assert!(start(&store, &period, "two", (2, 100)).await.is_none());
        // Settled tokens at the token quota refuse further runs.
        let (res, r) = start(&store, &period, "tokens", (10, 7)).await.unwrap();
        assert!(
            store
                .finish_run(&res, &finished(r, 7), &[])
                .await
                .unwrap()
                .now
        );
        assert!(start(&store, &period, "tokens", (10, 7)).await.is_none());
    }
}
