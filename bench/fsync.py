"""The disk's own sync latency beside a load: appends 200 bytes to a file in DIR and
fdatasyncs it every 2 ms for SECONDS, as the embedded store's write-ahead log does on commit.

usage: fsync.py DIR SECONDS  ->  prints "RESULT fsync_p50_ms=.. fsync_p99_ms=.. fsync_max_ms=.. syncs=.."
"""
import os
import sys
import time

folder, seconds = sys.argv[1], float(sys.argv[2])
path = os.path.join(folder, f"fsync-probe-{os.getpid()}")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
took = []
end = time.monotonic() + seconds
try:
    while time.monotonic() < end:
        os.write(fd, b"x" * 200)
        start = time.perf_counter()
        os.fdatasync(fd)
        took.append((time.perf_counter() - start) * 1000)
        time.sleep(0.002)
finally:
    os.close(fd)
    os.unlink(path)
took.sort()
q = lambda p: took[min(len(took) - 1, int(len(took) * p))]
print(f"RESULT fsync_p50_ms={q(0.5):.3f} fsync_p99_ms={q(0.99):.3f} fsync_max_ms={took[-1]:.3f} syncs={len(took)}")
