"""Long fuzzing run of the container parser and ``Codec.decode``: the properties of test/test_fuzz.py, for
as many cases as asked, within a time limit.

The parser cases are split evenly between the parser properties, the decode cases between the decode
properties. Prints per property the cases run, their outcomes (a valid result, or the documented
exception by type and by the check that refused the data), the longest case, and the peak RSS. Exits 1
if any case raised an undocumented exception or broke a property (its traceback, shrunk by Hypothesis,
is printed); a case running past --case-time-limit ends the process with every thread's traceback.

    .venv/bin/python bench/fuzz_decode.py [--parser-cases N] [--decode-cases N] [--time-limit S]
    .venv/bin/python bench/fuzz_decode.py --write-corpus    # after a change of the format or the weights
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import UnsatisfiedAssumption

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
import test_fuzz as fuzz  # noqa: E402

#: Hypothesis runs this many cases at a time: each run starts with a fresh record of the cases it
#: generated (so memory stays flat), and the time limit is checked between runs.
BATCH = 1000
FAILURE = "FAILURE "


@dataclass
class Tally:
    """What one property's cases did."""

    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    longest_s: float = 0.0
    longest_outcome: str = ""
    failed: bool = False


def run_property(strategy: st.SearchStrategy, case: Callable[..., str], cases: int, stop_at: float) -> Tally:
    """Run ``case`` on ``cases`` examples of ``strategy``, or until the clock reaches ``stop_at``."""
    tally = Tally()

    def timed(example: object) -> None:
        start = time.perf_counter()
        try:
            outcome = case(example)
        except UnsatisfiedAssumption:
            outcome = "left out"  # an allowed size too large to decode quickly: not a case
            raise
        except Exception as error:
            outcome = FAILURE + type(error).__name__
            raise
        finally:
            elapsed = time.perf_counter() - start
            tally.cases += outcome != "left out"
            tally.outcomes[outcome] += 1
            if elapsed > tally.longest_s:
                tally.longest_s, tally.longest_outcome = elapsed, outcome

    while tally.cases < cases and time.monotonic() < stop_at and not tally.failed:
        run = settings(
            max_examples=min(BATCH, cases - tally.cases),
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )(given(strategy)(timed))
        try:
            run()
        except Exception:
            traceback.print_exc()
            tally.failed = True
    return tally


def print_tally(label: str, tally: Tally) -> None:
    by_type = Counter()
    for outcome, count in tally.outcomes.items():
        by_type[outcome.split(":")[0]] += count
    print(f"\n{label}: {tally.cases} cases, longest {tally.longest_s * 1e3:.0f} ms ({tally.longest_outcome})")
    print("  by type:   " + ", ".join(f"{name} {count}" for name, count in by_type.most_common()))
    for outcome, count in tally.outcomes.most_common():
        print(f"  {count:8d}  {outcome}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parser-cases", type=int, default=90_000)
    parser.add_argument("--decode-cases", type=int, default=15_000)
    parser.add_argument("--time-limit", type=float, default=3600.0, help="seconds for the whole run")
    parser.add_argument("--case-time-limit", type=float, default=fuzz.CASE_TIME_LIMIT_S, help="seconds per case")
    parser.add_argument("--write-corpus", action="store_true", help=f"rewrite {fuzz.CORPUS} and exit")
    args = parser.parse_args()

    if args.write_corpus:
        for path in fuzz.write_corpus():
            print(f"{path}: {path.stat().st_size} bytes")
        return

    fuzz.CASE_TIME_LIMIT_S = args.case_time_limit
    start = time.monotonic()
    stop_at = start + args.time_limit
    for name in fuzz.SEEDS:  # build the two codecs' models before the clock per case starts
        fuzz.decode_case(fuzz.SEEDS[name].model, (name, fuzz.seed_bytes(name)), True)
    print(f"setup: peak RSS {fuzz.peak_rss_mb():.0f} MB")
    groups = (
        (fuzz.PARSER_PROPERTIES, args.parser_cases),
        (fuzz.DECODE_PROPERTIES, args.decode_cases),
    )
    tallies = {}
    for properties, cases in groups:
        for label, (strategy, case) in properties.items():
            tallies[label] = run_property(strategy, case, cases // len(properties), stop_at)
            print_tally(label, tallies[label])

    total = sum(tally.cases for tally in tallies.values())
    longest = max(tallies.values(), key=lambda tally: tally.longest_s)
    failures = sum(count for tally in tallies.values() for o, count in tally.outcomes.items() if o.startswith(FAILURE))
    print(
        f"\ntotal: {total} cases in {time.monotonic() - start:.0f} s, {failures} failures, "
        f"longest case {longest.longest_s * 1e3:.0f} ms, peak RSS {fuzz.peak_rss_mb():.0f} MB"
    )
    if time.monotonic() >= stop_at:
        print(f"stopped by the time limit of {args.time_limit:.0f} s")
    sys.exit(1 if any(tally.failed for tally in tallies.values()) else 0)


if __name__ == "__main__":
    main()
