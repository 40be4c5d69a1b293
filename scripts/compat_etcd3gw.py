"""etcd JSON gateway checks through the Python `etcd3gw` client (2.4, the gateway client
OpenStack uses; it reads GET /version to choose the API prefix).

Run by scripts/compat.sh with the venv it sets up:  python compat_etcd3gw.py HOST:PORT
Prints `ok NAME` or `FAIL NAME: expected ... got ...` per check and exits 1 if any failed.
"""

import sys
import threading

from etcd3gw.client import Etcd3Client

import compat_checks
from compat_checks import area, check

compat_checks.PREFIX = "etcd3gw "


host, port = sys.argv[1].rsplit(":", 1)
c = Etcd3Client(host=host, port=int(port), timeout=15)


def put_get():
    check("picks the /v3/ prefix from /version", "/v3/", c.api_path)
    check("put", True, c.put("gw3/a", "one"))
    check("get", [b"one"], c.get("gw3/a"))
    c.put("gw3/b", "two")
    check("get_prefix", [b"one", b"two"], sorted(v for v, _ in c.get_prefix("gw3/")))
    check("replace (a txn compare-and-set)", True, c.replace("gw3/a", "one", "uno"))
    check("replace with a stale value fails", False, c.replace("gw3/a", "one", "eins"))
    check("delete", True, c.delete("gw3/b"))
    check("status names a leader", True, int(c.status()["leader"]) != 0)
    check("members", 3, len(c.members()))


def lease():
    lease = c.lease(ttl=60)
    c.put("gw3/leased", "x", lease=lease)
    check("lease refresh (keep-alive)", 60, lease.refresh())
    check("lease ttl", True, 0 < lease.ttl() <= 60)
    check("lease keys", [b"gw3/leased"], lease.keys())
    check("lease revoke", True, lease.revoke())
    check("revoking the lease deletes its key", [], c.get("gw3/leased"))


def lock():
    lock = c.lock("gw3-lock", ttl=60)
    check("lock acquire", True, lock.acquire())
    check("a second holder cannot take it", False, c.lock("gw3-lock", ttl=60).acquire())
    check("lock refresh", 60, lock.refresh())
    check("lock release", True, lock.release())
    check("then another can", True, c.lock("gw3-lock", ttl=60).acquire())


def watch():
    events, cancel = c.watch("gw3/w")
    got = []
    reader = threading.Thread(target=lambda: got.append(next(events)), daemon=True)
    reader.start()
    # The watch is created asynchronously: put until the event arrives.
    for _ in range(50):
        c.put("gw3/w", "watched")
        reader.join(0.2)
        if got:
            break
    cancel()
    check("watch sees the put", [b"watched"], [e["kv"]["value"].encode() if isinstance(e["kv"]["value"], str)
                                               else e["kv"]["value"] for e in got])


for f in (put_get, lease, lock, watch):
    area(f)
print(f"etcd3gw: {compat_checks.PASSED} passed, {compat_checks.FAILED} failed", flush=True)
sys.exit(compat_checks.exit_code())
