"""Container health check: exit 0 when a URL answers 2xx, else 1.

The images have no curl, and starting `gridm2m` itself for a probe would import the whole
stack every 30 s, so this uses the standard library only.

    python healthcheck.py http://127.0.0.1:9110/health                 # gateway ops server
    python healthcheck.py http://127.0.0.1:8080/cse-in --originator /id-in   # a CSE
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence


def probe(url: str, originator: str | None, timeout: float) -> str | None:
    """None when healthy, else why not."""
    headers = {"Accept": "application/json"}
    if originator is not None:
        # A oneM2M RETRIEVE: the CSE answers 2000 only when its core and storage work.
        headers.update({"X-M2M-Origin": originator, "X-M2M-RI": "healthcheck", "X-M2M-RVI": "3"})
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))
    return None if 200 <= status < 300 else f"HTTP {status}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 when URL answers 2xx, else 1.")
    parser.add_argument("url")
    parser.add_argument("--originator", help="send a oneM2M RETRIEVE as this originator")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    args = parser.parse_args(argv)
    problem = probe(args.url, args.originator, args.timeout)
    if problem is not None:
        print(f"unhealthy: {args.url}: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
