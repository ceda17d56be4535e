"""What ``make test`` skipped, and why: ``python -m tests.support.skips FILE`` prints the reasons the
runs wrote to FILE (tests/conftest.py), each with how many tests it skipped."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def main(path: str) -> int:
    file = Path(path)
    reasons = Counter(file.read_text().splitlines()) if file.exists() else Counter[str]()
    if not reasons:
        print("make test: nothing was skipped")
        return 0
    print(f"make test: {sum(reasons.values())} test(s) skipped:")
    for reason, count in reasons.most_common():
        print(f"  {count:4d}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
