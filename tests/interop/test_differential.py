"""GridM2M's CSE answers the scripted requests of `differential.CASES` as ACME does, step by
step (status code, attribute names, a few values), except where `differential.DELIBERATE`
(docs/conformance.md) or `differential.PENDING` lists the difference; and each listed
difference still occurs, so both lists stay true.

The cases follow TS-0001 (resource procedures, clause 10) and TS-0004 (primitives, clause 7;
response status codes, clause 6.6); ACME, pinned, is the reference where the texts leave room.
One ACME and one GridM2M CSE serve the whole module. Skipped only when acmecse cannot be
installed here (no way to reach the package index).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from tests.interop import differential
from tests.interop.acme_cse import ACME_VERSION, AcmeUnavailable, acme_python
from tests.interop.differential import DELIBERATE, PENDING, Difference, StepResult

Runs = tuple[list[StepResult], list[StepResult]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Every case on ACME and on GridM2M: (ACME's results, GridM2M's)."""
    try:
        acme_python()
    except AcmeUnavailable as error:
        pytest.skip(f"acmecse {ACME_VERSION} cannot be installed here: {error}")
    workdir: Path = tmp_path_factory.mktemp("differential")
    return await differential.run_both(workdir)


@pytest.fixture(scope="module")
def found(runs: Runs) -> list[Difference]:
    return differential.differences(*runs)


def test_every_case_ran_every_step_on_both_cses(runs: Runs) -> None:
    theirs, ours = runs
    steps = [(case.name, step.name) for case in differential.CASES for step in case.steps]
    assert [(r.case, r.step) for r in theirs] == steps
    assert [(r.case, r.step) for r in ours] == steps
    assert len(set(steps)) == len(steps), "a (case, step) name is used twice"


def test_gridm2m_answers_as_acme_except_where_a_difference_is_listed(
    found: list[Difference],
) -> None:
    new = [difference for difference in found if differential.listed(difference.key) == "NEW"]
    assert not new, (
        "differences from ACME that neither DELIBERATE nor PENDING lists (fix GridM2M, or "
        "list them in tests/interop/differential.py):\n"
        + "\n".join(f"{d.case} / {d.step}: {d.describe()}" for d in new)
    )


def test_every_listed_difference_still_occurs(found: list[Difference]) -> None:
    occurring = {difference.key for difference in found}
    gone = {
        f"{kind}[{key!r}]"
        for kind, listed in (("DELIBERATE", DELIBERATE), ("PENDING", PENDING))
        for key in listed
        if key not in occurring
    }
    assert not gone, (
        "GridM2M now answers these steps as ACME does; remove them from "
        "tests/interop/differential.py: " + ", ".join(sorted(gone))
    )


def test_no_step_is_listed_both_as_deliberate_and_as_pending() -> None:
    assert not set(DELIBERATE) & set(PENDING)
