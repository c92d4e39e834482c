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
//! so a busy server writes many per commit. The workers run on threads of their own (see
//! `store::ledger_runtime`), not behind the requests queued on the request threads.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use super::instances::RunningRun;
use super::records::{ChatRecord, Reservation, RunRecord, RunStatus, Step, last_bool, reservation};
use super::usage::Period;
use super::{Native, Result, Store, StoreError};

mod script;
pub(super) use script::KnownRows;
use script::{
    EVENTS, Groups, HOOKED, STEPS, Slot, begin_row, chat_row, hooked, obj, outbox, row, script,
    settle_row,
};

/// Tenants per store are spread over this many shards by a hash of their slug; each shard has
/// two workers, one for run starts and one for settlements and chats.
const SHARDS: usize = 4;
/// Workers per store: two lanes per shard.
pub(super) const LANES: usize = SHARDS * 2;
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
    /// The period and day the op counts in.
    fn reservation(&self) -> std::borrow::Cow<'_, Reservation> {
        use std::borrow::Cow;
        match self {
            Op::Chat { chat, period } => {
                Cow::Owned(reservation(&chat.tenant, period, chat.created_at))
            }
            Op::Begin { period, run, .. } => {
                Cow::Owned(reservation(&run.tenant, period, run.started_at))
            }
            Op::Settle { reservation, .. } => Cow::Borrowed(reservation),
        }
    }

    /// The counter rows the op writes (see [`KnownRows`]), in the period and day `r` (its
    /// [`Op::reservation`]).
    fn counters(&self, r: &Reservation) -> Vec<String> {
        match self {
            Op::Chat { .. } => vec![
                row("usage_settled", &r.period_key),
                row("usage_daily", &r.day_key),
            ],
            Op::Begin { run, .. } => vec![
                row("usage_period", &r.period_key),
                row("agent_state", &run.agent_id),
            ],
            Op::Settle { run, .. } => vec![
                row("usage_settled", &r.period_key),
                row("usage_daily", &r.day_key),
                row("agent_settled", &run.agent_id),
            ],
        }
    }

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
    /// What its writes committed, for `/metrics`.
    tally: Arc<Tally>,
}

/// What the ledger committed since the process started: writes over transactions is how many
/// writes a commit carries on average (1 on an idle server, more as load grows).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LedgerFigures {
    /// Transactions committed with at least one write.
    pub transactions: u64,
    /// Chats, run starts and run settlements committed.
    pub writes: u64,
}

#[derive(Default)]
struct Tally {
    transactions: AtomicU64,
    writes: AtomicU64,
}

impl Tally {
    fn committed(&self, writes: usize) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
    }
}

struct Shard {
    queue: mpsc::UnboundedSender<Pending>,
    /// Writes waiting in the queue.
    queued: Arc<AtomicUsize>,
    /// Held while a write of this shard runs: one at a time, so they never race each other.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Ledger {
    /// Starts the workers on `runtime`; they write through `store` (a handle without a
    /// ledger) and stop when the last handle with this ledger is dropped.
    pub(super) fn start(store: &Store, runtime: &tokio::runtime::Handle) -> Arc<Ledger> {
        let tally = Arc::new(Tally::default());
        let shards = (0..LANES)
            .map(|_| {
                let (queue, rx) = mpsc::unbounded_channel();
                let shard = Shard {
                    queue,
                    queued: Arc::default(),
                    gate: Arc::default(),
                };
                runtime.spawn(work(
                    store.clone(),
                    rx,
                    Arc::clone(&shard.queued),
                    Arc::clone(&shard.gate),
                    Arc::clone(&tally),
                ));
                shard
            })
            .collect();
        Arc::new(Ledger {
            shards,
            direct: store.clone(),
            tally,
        })
    }

    /// The lane of `op`'s tenant's shard that writes it.
    fn shard(&self, op: &Op) -> &Shard {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        op.tenant().hash(&mut hasher);
        &self.shards[hasher.finish() as usize % SHARDS * 2 + op.lane()]
    }

    pub(super) fn figures(&self) -> LedgerFigures {
        LedgerFigures {
            transactions: self.tally.transactions.load(Ordering::Relaxed),
            writes: self.tally.writes.load(Ordering::Relaxed),
        }
    }

    /// Writes `op` at once when its tenant's shard is idle (no hand-off to another task);
    /// otherwise queues it on the shard and waits for its batch to commit.
    pub(super) async fn submit(&self, op: Op) -> Result<Outcome> {
        let shard = self.shard(&op);
        if shard.queued.load(Ordering::Acquire) == 0
            && let Ok(_gate) = Arc::clone(&shard.gate).try_lock_owned()
        {
            let outcome = self.direct.write_one(&op).await;
            if outcome.is_ok() {
                self.tally.committed(1);
            }
            return outcome;
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
    tally: Arc<Tally>,
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
                tally.committed(batch.len());
                for (p, o) in batch.into_iter().zip(outcomes) {
                    let _ = p.reply.send(Ok(o));
                }
            }
            // One bad write must not fail its neighbours: write them one by one.
            Err(StoreError::Internal(e)) if batch.len() > 1 => {
                tracing::warn!(error = %format!("{e:#}"), writes = batch.len(), "a batch failed; writing its writes one by one");
                for p in batch {
                    let one = store.write_one(&p.op).await;
                    if one.is_ok() {
                        tally.committed(1);
                    }
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
                quota_runs,
                quota_tokens,
                run,
                ..
            } => {
                let r = op.reservation();
                let counters = op.counters(&r);
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
                let counters = op.counters(reservation);
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
                Op::Chat { chat, .. } => {
                    let r = op.reservation();
                    // The same chat twice in one batch would be counted twice.
                    if seen.insert(("chat", chat.id.as_str())) {
                        let vars = || {
                            let vars = json!({"tenant": chat.tenant, "period": r.period_key,
                                "day": r.day_key, "date": r.date, "start": r.start});
                            (obj(vars), op.counters(&r))
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
                            let vars = json!({"tenant": r.tenant, "period": r.period_key,
                                "start": r.start, "day": r.day_key, "date": r.date,
                                "agent_id": run.agent_id});
                            (obj(vars), op.counters(r))
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
                    quota_runs,
                    quota_tokens,
                    run,
                    ..
                } => {
                    let r = op.reservation();
                    let key = format!("{}\n{}", r.period_key, run.agent_id);
                    let vars = || {
                        let vars = json!({"tenant": run.tenant, "key": r.period_key,
                            "agent": run.agent, "agent_id": run.agent_id, "start": r.start,
                            "qr": quota_runs, "qt": quota_tokens});
                        (obj(vars), op.counters(&r))
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
mod tests;
