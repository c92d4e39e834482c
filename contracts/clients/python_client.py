"""Real calls through the Python client generated from openapi/v1.yaml by openapi-python-client.

Run by scripts/contract-live with the generated package importable as `pyclient`,
and ARES_URL / ARES_KEY naming a live server and a key of a tenant that has the
example agents.
"""
import os
import time

from pyclient import AuthenticatedClient
from pyclient.api.agents import cancel_run, get_agent, get_run, list_agent_runs, list_agents, run_agent
from pyclient.api.api_keys import create_api_key, list_api_keys, revoke_api_key
from pyclient.api.usage import get_usage
from pyclient.api.webhooks import create_webhook, delete_webhook, list_webhook_deliveries, list_webhooks, retry_webhook_delivery
from pyclient.models import (
    AgentList, CreatedKey, CreatedWebhook, CreateKeyRequest, DeliveryList, DeliveryState, RunList, RunRequest,
    RunRequestInput, RunResponse, UsageResponse, WebhookEvent, WebhookEventType, WebhookRequest,
)

client = AuthenticatedClient(base_url=os.environ["ARES_URL"], token=os.environ["ARES_KEY"])

agents = list_agents.sync(client=client, page=1, per_page=20)
assert isinstance(agents, AgentList), agents
names = [a.name for a in agents.agents]
assert "risk-analyzer" in names, names
assert agents.total == len(names)

detail = get_agent.sync("risk-analyzer", client=client)
assert detail.config.tools == ["calculator"], detail

run = run_agent.sync(
    "risk-analyzer",
    client=client,
    body=RunRequest(input_=RunRequestInput.from_dict({"message": "Evaluate this transaction", "context": {"amount": 15000}})),
)
assert isinstance(run, RunResponse), run
assert run.status == "completed", run
assert run.output is not None and 0 <= run.output["risk_score"] <= 1, run.output
assert run.tokens_used > 0

runs = list_agent_runs.sync("risk-analyzer", client=client)
assert isinstance(runs, RunList) and runs.runs[0].id == run.id, runs

# A run by its id, with its steps; in the background; cancels; an idempotent repeat.
fetched = get_run.sync(run.id, client=client)
assert isinstance(fetched, RunResponse) and fetched.id == run.id, fetched
assert fetched.agent_name == "risk-analyzer" and fetched.steps and fetched.steps[0].kind == "model", fetched
body = RunRequest(input_=RunRequestInput.from_dict({"message": "Evaluate this transaction"}))
started = run_agent.sync_detailed("risk-analyzer", client=client, body=body, prefer="respond-async")
assert started.status_code == 202, started
assert started.headers["location"] == f"/v1/runs/{started.parsed.id}", started.headers
for _ in range(100):
    current = get_run.sync(started.parsed.id, client=client)
    if current.status != "running":
        break
    time.sleep(0.05)
assert current.status == "completed", current
refused = cancel_run.sync_detailed(current.id, client=client)
assert refused.status_code == 409, refused
first = run_agent.sync_detailed("risk-analyzer", client=client, body=body, idempotency_key=f"py-{run.id}")
again = run_agent.sync_detailed("risk-analyzer", client=client, body=body, idempotency_key=f"py-{run.id}")
assert first.status_code == again.status_code == 200, (first, again)
assert again.headers.get("idempotent-replayed") == "true" and again.parsed.id == first.parsed.id, again

# A webhook endpoint: the event of a run is written with the run, a retry, the endpoint removed.
hook = create_webhook.sync(
    client=client,
    body=WebhookRequest(url="https://203.0.113.10/hook", events=[WebhookEvent.RUN_COMPLETED], description="python client"),
)
assert isinstance(hook, CreatedWebhook) and hook.secret.startswith("whsec_"), hook
assert any(w.id == hook.id for w in list_webhooks.sync(client=client).webhooks)
heard = run_agent.sync("risk-analyzer", client=client, body=body)
deliveries = list_webhook_deliveries.sync(hook.id, client=client)
assert isinstance(deliveries, DeliveryList) and deliveries.total == 1, deliveries
delivery = deliveries.deliveries[0]
assert delivery.run_id == heard.id and delivery.event_type == WebhookEventType.RUN_COMPLETED, delivery
assert delivery.state in (DeliveryState.PENDING, DeliveryState.FAILED, DeliveryState.DELIVERED), delivery
retried = retry_webhook_delivery.sync_detailed(hook.id, delivery.id, client=client)
assert retried.status_code == 202, retried
assert delete_webhook.sync_detailed(hook.id, client=client).status_code == 204
assert list_webhook_deliveries.sync_detailed(hook.id, client=client).status_code == 404

usage = get_usage.sync(client=client)
assert isinstance(usage, UsageResponse), usage
assert usage.total_runs >= 1 and usage.quota_runs > 0

created = create_api_key.sync(client=client, body=CreateKeyRequest(name="python-client", expires_in_days=30))
assert isinstance(created, CreatedKey) and created.secret.startswith("ares_"), created
assert any(k.id == created.key for k in list_api_keys.sync(client=client).keys)
revoked = revoke_api_key.sync_detailed(created.key, client=client)
assert revoked.status_code == 204, revoked
assert all(k.id != created.key for k in list_api_keys.sync(client=client).keys)

print("python client: list agents, get agent, run, runs, a run by id, a background run, a cancel, an idempotent repeat, a webhook and its delivery, usage, create and revoke a key: ok")
