"""etcd v3 compatibility checks through the Python `etcd3` client (0.12, gRPC).

Run by scripts/compat.sh with the venv it sets up:  python compat_etcd3.py HOST:PORT
Prints `ok NAME` or `FAIL NAME: expected ... got ...` per check (compat.sh counts them)
and exits 1 if any failed. A check that raises is reported as FAIL and the rest still run.
"""

import sys
import threading
import time

import etcd3

import compat_checks
from compat_checks import area, check


host, port = sys.argv[1].rsplit(":", 1)
c = etcd3.client(host=host, port=int(port), timeout=15)


def kv():
    c.put("py/k", "v1")
    value, meta = c.get("py/k")
    check("python put/get", (b"v1", b"py/k", 1), (value, meta.key, meta.version))
    c.put("py/k", "v2")
    value, meta2 = c.get("py/k")
    check("python second put bumps version and mod_revision",
          (b"v2", 2, meta.create_revision, True),
          (value, meta2.version, meta2.create_revision, meta2.mod_revision > meta.mod_revision))
    check("python delete", True, c.delete("py/k"))
    check("python get after delete", (None, None), c.get("py/k"))
    check("python delete of a missing key", False, c.delete("py/k"))


def prefix():
    for k, v in (("a", "1"), ("b", "2"), ("c", "3")):
        c.put(f"py/p/{k}", v)
    c.put("py/q", "other")
    got = sorted((m.key, v) for v, m in c.get_prefix("py/p/"))
    check("python get_prefix", [(b"py/p/a", b"1"), (b"py/p/b", b"2"), (b"py/p/c", b"3")], got)
    c.delete_prefix("py/p/")
    check("python delete_prefix", [], list(c.get_prefix("py/p/")))


def transaction():
    c.put("py/t", "a")
    t = c.transactions
    ok, _ = c.transaction(compare=[t.value("py/t") == "a"],
                          success=[t.put("py/t", "b")], failure=[t.put("py/t", "fail")])
    check("python transaction success branch", (True, b"b"), (ok, c.get("py/t")[0]))
    ok, responses = c.transaction(compare=[t.value("py/t") == "a"],
                                  success=[t.put("py/t", "x")], failure=[t.get("py/t")])
    got = [(m.key, v) for v, m in responses[0]]
    check("python transaction failure branch returns its get", (False, [(b"py/t", b"b")]), (ok, got))
    ok, _ = c.transaction(compare=[t.version("py/t") > 1, t.create("py/none") == 0],
                          success=[], failure=[])
    check("python transaction version/create compares", True, ok)


def lease():
    le = c.lease(30)
    c.put("py/l", "v", lease=le)
    check("python lease grant + put with lease",
          (30, True, [b"py/l"]), (le.granted_ttl, 0 < le.remaining_ttl <= 30, le.keys))
    refreshed = le.refresh()
    check("python lease refresh", [30], [r.TTL for r in refreshed])
    le.revoke()
    check("python lease revoke deletes the key", None, c.get("py/l")[0])
    check("python revoked lease has TTL -1", -1, le.remaining_ttl)


def watch():
    got = []
    done = threading.Event()

    def callback(response):
        for ev in response.events:
            got.append((type(ev).__name__, ev.key, ev.value))
            if len(got) >= 2:
                done.set()

    # add_watch_callback returns once the server has created the watch.
    watch_id = c.add_watch_callback("py/w", callback)
    try:
        c.put("py/w", "1")
        c.delete("py/w")
        done.wait(15)
    finally:
        c.cancel_watch(watch_id)
    check("python watch callback gets put and delete",
          [("PutEvent", b"py/w", b"1"), ("DeleteEvent", b"py/w", b"")], got)

    # The iterator form, from a past revision: replays history.
    c.put("py/h", "1")
    _, meta = c.get("py/h")
    c.put("py/h", "2")
    events, cancel = c.watch("py/h", start_revision=meta.mod_revision)
    replay = []
    timer = threading.Timer(15, cancel)  # never hang: cancel ends the iterator
    timer.start()
    for ev in events:
        replay.append(ev.value)
        if len(replay) == 2:
            break
    cancel()
    timer.cancel()
    check("python watch iterator with start_revision replays", [b"1", b"2"], replay)


def lock():
    first = c.lock("py-lock", ttl=5)
    check("python lock acquire", True, first.acquire(timeout=10))
    check("python lock is_acquired", True, first.is_acquired())
    second = c.lock("py-lock", ttl=5)
    start = time.monotonic()
    check("python second lock waits and times out", False, second.acquire(timeout=1))
    check("python second lock waited ~1 s", True, time.monotonic() - start >= 0.9)
    check("python lock release", True, first.release())
    check("python second lock acquires after release", True, second.acquire(timeout=10))
    check("python second lock release", True, second.release())


def status():
    s = c.status()
    members = sorted(m.name for m in c.members)
    check("python members", ["m1", "m2", "m3"], members)
    check("python status",
          (True, True, True, True, True),
          (s.version.startswith("3."), s.leader is not None and s.leader.name in members,
           s.raft_index > 0, s.raft_term > 0, s.db_size > 0))


for f in (kv, prefix, transaction, lease, watch, lock, status):
    area(f)
c.close()
sys.exit(compat_checks.exit_code())
