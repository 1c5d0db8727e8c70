"""Fail unless coverage meets duplexd's floors (`make cov` runs it after pytest-cov).

    python tools/check_coverage.py out/coverage.json

Overall >= 80 %; the real-time core (codec, protocol state, ring, pacer, session and its writer)
>= 95 % each.
"""

from __future__ import annotations

import json
import sys

OVERALL = 80.0
PER_FILE = {
    "duplexd/protocol/codec.py": 95.0,
    "duplexd/protocol/layouts.py": 95.0,
    "duplexd/protocol/state.py": 95.0,
    "duplexd/_downlink/ring.py": 95.0,
    "duplexd/_downlink/pacer.py": 95.0,
    "duplexd/_server/session.py": 95.0,
    "duplexd/_downlink/writer.py": 95.0,
}


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    failures: list[str] = []
    files = report["files"]
    for name, floor in PER_FILE.items():
        if name not in files:
            failures.append(f"{name}: not measured")
            continue
        pct = float(files[name]["summary"]["percent_covered"])
        ok = pct >= floor
        print(f"{'ok  ' if ok else 'LOW '} {name:<24} {pct:6.2f} %  (floor {floor:g} %)")
        if not ok:
            failures.append(f"{name}: {pct:.2f} % < {floor:g} %")
    total = float(report["totals"]["percent_covered"])
    mark = "ok  " if total >= OVERALL else "LOW "
    print(f"{mark} {'overall':<24} {total:6.2f} %  (floor {OVERALL:g} %)")
    if total < OVERALL:
        failures.append(f"overall: {total:.2f} % < {OVERALL:g} %")
    for line in failures:
        print(f"coverage too low: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "out/coverage.json"))
