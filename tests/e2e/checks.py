"""How every end-to-end script reports: one list of failures per process, check() printing each
result as it comes, exit_status() printing the failures last (after a log tail when there are any)."""
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


def exit_status(log_tail=None):
    """Exit status of the script; log_tail: a callable giving text worth seeing on failure."""
    if failures and log_tail is not None:
        print(log_tail()[-4000:])
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0
