"""Runs the conformance suite with several `emberd`s at once: each case in its own
`python3 -m unittest` process (each starts its own `emberd --pty`), `--jobs` of them at a time.

    python3 tests/conformance/run.py [--jobs N] [-v] [PATTERN ...]

PATTERNs keep the cases whose id (`module.Class.test`) contains one of them. Exits 0 when every
case passed (or was skipped). Environment: see protocol.py (EMBERD, EMBER, EMBER_TINY_IMAGE,
EMBER_CONFORMANCE_PATIENCE); EMBER_CONFORMANCE_JOBS sets the default of --jobs (4).
"""

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import protocol as p  # noqa: E402

# Cases that take seconds: started first, so that the quick ones fill the gaps.
SLOW = ("Stalled", "test_device_numbers_wrap", "ContextFull", "Flash", "Sentences", "Idle",
        "DuringReply", "Replies", "SameReplyBothModes", "PersonInterrupted", "Baud", "Enter")


def case_ids():
    suite = unittest.TestLoader().discover(HERE, top_level_dir=HERE)
    out = []

    def walk(s):
        for t in s:
            if isinstance(t, unittest.TestSuite):
                walk(t)
            elif isinstance(t, unittest.loader._FailedTest):
                raise SystemExit("cannot load %s: %s" % (t.id(), t._exception))
            else:
                out.append(t.id())

    walk(suite)
    return out


def rank(case):
    for i, name in enumerate(SLOW):
        if "." + name in case:
            return i
    return len(SLOW)


def run_case(case, env):
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "unittest", case],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    text = proc.stdout.decode(errors="replace")
    skipped = re.search(r"skipped=(\d+)", text.splitlines()[-1] if text else "")
    return case, proc.returncode, time.monotonic() - start, bool(skipped), text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", "-j", type=int,
                        default=int(os.environ.get("EMBER_CONFORMANCE_JOBS", "4")))
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.add_argument("patterns", nargs="*")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    made = not os.environ.get("EMBER_TINY_IMAGE")
    env["EMBER_TINY_IMAGE"] = p.tiny_image()  # made once, not by every case
    try:
        return run(args, env)
    finally:
        if made:
            shutil.rmtree(os.path.dirname(env["EMBER_TINY_IMAGE"]), True)


def run(args, env):
    cases = [c for c in case_ids() if not args.patterns or any(x in c for x in args.patterns)]
    cases.sort(key=rank)

    start = time.monotonic()
    failed, skipped = [], []
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_case, c, env) for c in cases]
        for f in concurrent.futures.as_completed(futures):
            case, rc, took, skip, text = f.result()
            verdict = "FAIL" if rc else ("skipped" if skip else "ok")
            if args.verbose or rc:
                print("%-7s %5.1fs  %s" % (verdict, took, case), flush=True)
            if rc:
                failed.append(case)
                print(text, flush=True)
            elif skip:
                skipped.append(case)
    took = time.monotonic() - start
    print("Ran %d conformance cases in %.1fs with %d jobs: %s%s" % (
        len(cases), took, args.jobs, "FAILED (%d): %s" % (len(failed), ", ".join(failed))
        if failed else "OK", " (skipped %d: %s)" % (len(skipped), ", ".join(skipped))
        if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
