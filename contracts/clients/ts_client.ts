// Real calls through a TypeScript client: types generated from openapi/v1.yaml by
// openapi-typescript, requests made with openapi-fetch, checked with `tsc --strict`.
// Run by scripts/contract-live with ARES_URL / ARES_KEY naming a live server and key.
import createClient from "openapi-fetch";
import type { paths } from "./v1.d.ts";


const client = createClient<paths>({
  baseUrl: process.env.ARES_URL,
  headers: { Authorization: `Bearer ${process.env.ARES_KEY}` },
});

function check(cond: boolean, what: string): asserts cond {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const agents = await client.GET("/v1/agents", { params: { query: { page: 1, per_page: 20 } } });
check(agents.data !== undefined, "list agents");
check(agents.data.agents.some((a) => a.name === "risk-analyzer"), "risk-analyzer is listed");

const run = await client.POST("/v1/agents/{name}/run", {
  params: { path: { name: "risk-analyzer" } },
  body: { input: { message: "Evaluate this transaction", context: { amount: 15000, currency: "USD" } } },
});
check(run.data !== undefined, "run");
check(run.data.status === "completed", `run completed: ${JSON.stringify(run.data)}`);
check(run.data.tokens_used > 0, "tokens used");

const fetched = await client.GET("/v1/runs/{id}", { params: { path: { id: run.data.id } } });
check(fetched.data !== undefined && fetched.data.id === run.data.id, "a run by its id");
check((fetched.data.steps ?? []).length > 0, "with its steps");
const started = await client.POST("/v1/agents/{name}/run", {
  params: { path: { name: "risk-analyzer" }, header: { Prefer: "respond-async" } },
  body: { input: { message: "Evaluate this transaction" } },
});
check(started.response.status === 202, `a background run: ${started.response.status}`);
check(started.response.headers.get("location") === `/v1/runs/${started.data?.id}`, "its location");
const refused = await client.POST("/v1/runs/{id}/cancel", { params: { path: { id: run.data.id } } });
check(refused.error !== undefined && refused.error.error.code === "run_finished", "a finished run is not cancelled");
const keyed = { params: { path: { name: "risk-analyzer" }, header: { "Idempotency-Key": `ts-${run.data.id}` } },
  body: { input: { message: "Evaluate this transaction" } } };
const first = await client.POST("/v1/agents/{name}/run", keyed);
const again = await client.POST("/v1/agents/{name}/run", keyed);
check(again.response.headers.get("idempotent-replayed") === "true" && again.data?.id === first.data?.id, "an idempotent repeat");

const hook = await client.POST("/v1/webhooks", {
  body: { url: "https://203.0.113.11/hook", events: ["run.failed", "run.cancelled"] },
});
check(hook.data !== undefined && hook.data.secret.startsWith("whsec_"), "webhook registered");
const hooks = await client.GET("/v1/webhooks");
check(hooks.data !== undefined && hooks.data.webhooks.some((w) => w.id === hook.data.id), "webhook listed");
const deliveries = await client.GET("/v1/webhooks/{id}/deliveries", {
  params: { path: { id: hook.data.id }, query: { page: 1, per_page: 10 } },
});
check(deliveries.data !== undefined && deliveries.data.total === 0, "no failed or cancelled run: no delivery");
const removed = await client.DELETE("/v1/webhooks/{id}", { params: { path: { id: hook.data.id } } });
check(removed.response.status === 204, "webhook deleted");
const gone = await client.DELETE("/v1/webhooks/{id}", { params: { path: { id: hook.data.id } } });
check(gone.error !== undefined && gone.error.error.code === "webhook_not_found", "a deleted webhook is not found");

const usage = await client.GET("/v1/usage");
check(usage.data !== undefined && usage.data.total_runs >= 1, "usage counts the run");

const created = await client.POST("/v1/api-keys", { body: { name: "ts-client", expires_in_days: 7 } });
check(created.data !== undefined && created.data.secret.startsWith("ares_"), "key created");
const revoked = await client.DELETE("/v1/api-keys/{id}", { params: { path: { id: created.data.key } } });
check(revoked.response.status === 204, "key revoked");
const missing = await client.GET("/v1/agents/{name}", { params: { path: { name: "no-such-agent" } } });
check(missing.error !== undefined && missing.error.error.code === "agent_not_found", "typed error body");

console.log("typescript client: list agents, run, a run by id, a background run, a refused cancel, an idempotent repeat, webhooks, create and revoke a key, typed errors: ok");
