"""Verifies webhook deliveries with the Standard Webhooks reference library (`standardwebhooks`).

    python verify.py SECRET ATTEMPTS.json

ATTEMPTS.json is a list of {"headers": {...}, "body": "..."} as a receiver got them. Exits
non-zero, naming the attempt, when a signature does not verify.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook

secret, path = sys.argv[1], sys.argv[2]
hook = Webhook(secret)
with open(path) as f:
    attempts = json.load(f)
for i, attempt in enumerate(attempts):
    try:
        hook.verify(attempt["body"], attempt["headers"])
    except Exception as e:  # the library raises its own WebhookVerificationError
        sys.exit(f"attempt {i}: {e}")
print(f"standardwebhooks: {len(attempts)} signatures verified")
