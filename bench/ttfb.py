"""Time to first byte and total time of streamed chats, sequentially (concurrency 1).

usage: ttfb.py URL BODY_JSON AUTH N  ->  prints "RESULT ttfb_p50_ms=.. total_p50_ms=.. chunks=.."
"""
import http.client
import json
import statistics
import sys
import time
import urllib.parse

url, body, auth, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
u = urllib.parse.urlparse(url)
headers = {"Content-Type": "application/json"}
if auth:
    headers["Authorization"] = f"Bearer {auth}"
ttfb, total, chunks = [], [], 0
conn = http.client.HTTPConnection(u.hostname, u.port)
for _ in range(n):
    start = time.perf_counter()
    conn.request("POST", u.path, body=body, headers=headers)
    resp = conn.getresponse()
    first = resp.read(1)
    ttfb.append((time.perf_counter() - start) * 1000)
    rest = first + resp.read()
    total.append((time.perf_counter() - start) * 1000)
    chunks = rest.count(b"data: ")
print(f"RESULT ttfb_p50_ms={statistics.median(ttfb):.3f} total_p50_ms={statistics.median(total):.3f} events={chunks}")
