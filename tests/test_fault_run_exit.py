"""bench.fault_run's exit status, so the run can gate a release: 1 when any check fails, and in
a negative control 1 when a line that must fail passed. (The run itself takes minutes: the
checks it makes are measured in the closing notes, not here.)"""

from __future__ import annotations

from typing import Any

import pytest

from bench.fault_run import MUST_FAIL_IN_NEGATIVE_CONTROL, exit_status

OTHER_CHECK = "claims held longer than any LLM call takes (15 s, issue #18)"


def results(verdicts: dict[str, str], *, negative_control: bool = False) -> dict[str, Any]:
    return {
        "negative_control": negative_control,
        "checks": [{"check": name, "verdict": verdict} for name, verdict in verdicts.items()],
    }


def all_checks(verdict: str) -> dict[str, str]:
    return {name: verdict for name in (*MUST_FAIL_IN_NEGATIVE_CONTROL, OTHER_CHECK)}


def test_a_run_whose_checks_all_pass_exits_0() -> None:
    assert exit_status(results(all_checks("PASS"))) == 0


@pytest.mark.parametrize("failing", [*MUST_FAIL_IN_NEGATIVE_CONTROL, OTHER_CHECK])
def test_a_run_with_one_failed_check_exits_1(failing: str) -> None:
    assert exit_status(results({**all_checks("PASS"), failing: "FAIL"})) == 1


def test_a_negative_control_exits_0_only_when_the_lines_that_must_fail_fail() -> None:
    shown = {**all_checks("PASS"), **{name: "FAIL" for name in MUST_FAIL_IN_NEGATIVE_CONTROL}}
    not_shown = {**shown, MUST_FAIL_IN_NEGATIVE_CONTROL[0]: "PASS"}

    assert exit_status(results(shown, negative_control=True)) == 0
    assert exit_status(results(not_shown, negative_control=True)) == 1
