"""The check helpers of the Python compatibility scripts (compat_etcd3.py, compat_etcd3gw.py).

Each check prints `ok NAME` or `FAIL NAME: expected ... got ...` (compat.sh counts them);
`exit_code()` is 1 if any failed.
"""

PREFIX = ""
PASSED = 0
FAILED = 0


def check(name, want, got):
    global PASSED, FAILED
    if want == got:
        PASSED += 1
        print(f"ok {PREFIX}{name}", flush=True)
    else:
        FAILED += 1
        print(f"FAIL {PREFIX}{name}: expected {want!r} got {got!r}", flush=True)


def area(func):
    """Run one area's checks; an exception fails the area instead of ending the run."""
    global FAILED
    try:
        func()
    except Exception as e:  # noqa: BLE001 - report anything as a failed check
        FAILED += 1
        print(f"FAIL {PREFIX}python {func.__name__}: raised {type(e).__name__}: {e}", flush=True)


def exit_code():
    return 1 if FAILED else 0
