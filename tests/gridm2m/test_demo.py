"""`gridm2m demo`: the port it tells about, the summary's counts, the folder it leaves behind."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gridm2m.demo import Outcome, RunFolder, _print_summary, say_moved_ports
from gridm2m.processes import Stack


def test_a_busy_dashboard_port_is_said_with_the_port_taken_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        busy = other_program.getsockname()[1]
        stack = Stack(tmp_path, dashboard_port=busy)
        say_moved_ports(stack)
    taken = stack.dashboard_port
    assert taken != busy
    assert f"port {busy} is busy" in capsys.readouterr().out
    assert stack.dashboard_note is not None
    assert f"the dashboard is on {taken}" in stack.dashboard_note


def test_a_free_dashboard_port_is_taken_without_a_word(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    stack = Stack(tmp_path, dashboard_port=free)
    say_moved_ports(stack)
    assert stack.dashboard_port == free  # (another program could take it meanwhile: rare)
    assert capsys.readouterr().out == ""


def balance(outcome: Outcome) -> tuple[int, int]:
    """Both sides of the summary's equation."""
    left = sum(outcome.acknowledged.values()) + outcome.unconfirmed
    right = sum(outcome.delivered.values()) + outcome.queued + outcome.shed + outcome.lost
    return left, right


def test_the_summary_reconciles_when_everything_arrived() -> None:
    outcome = Outcome(
        acknowledged={"reading": 10, "event": 2}, delivered={"reading": 10, "event": 2}
    )
    assert (outcome.lost, outcome.unconfirmed) == (0, 0)
    assert balance(outcome) == (12, 12)


def test_more_at_the_mdms_than_acknowledged_is_unconfirmed_not_a_negative_loss() -> None:
    # The firmware case seen in a run: 5 stored at the MDMS, 3 counted by their meters (the
    # fleet stopped while the gateway's answers to 2 were on their way).
    outcome = Outcome(
        acknowledged={"firmware": 3, "reading": 40}, delivered={"firmware": 5, "reading": 40}
    )
    assert (outcome.lost, outcome.unconfirmed) == (0, 2)
    assert balance(outcome) == (45, 45)


def test_queued_and_shed_messages_explain_a_shortfall_but_the_rest_is_lost() -> None:
    outcome = Outcome(
        acknowledged={"reading": 20, "event": 3},
        delivered={"reading": 14, "event": 3},
        queued=2,
        shed=1,
    )
    assert (outcome.lost, outcome.unconfirmed) == (3, 0)
    assert balance(outcome) == (23, 23)


def test_one_familys_surplus_does_not_hide_anothers_loss() -> None:
    outcome = Outcome(
        acknowledged={"firmware": 3, "reading": 10}, delivered={"firmware": 5, "reading": 8}
    )
    assert (outcome.lost, outcome.unconfirmed) == (2, 2)
    assert balance(outcome) == (15, 15)


def test_the_printed_summary_names_both_counts_of_meters_and_adds_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    outcome = Outcome(
        registered=100,
        heard=96,
        acknowledged={"firmware": 3, "reading": 10},
        delivered={"firmware": 5, "reading": 8},
        queued=1,
    )
    _print_summary(outcome, 60)
    out = capsys.readouterr().out
    assert "100 meters registered at the gateway, 96 heard from at the MDMS" in out
    assert "acknowledged 13 + unconfirmed 2 = at MDMS 13 + queued 1 + shed 0 + lost 1" in out
    assert "for an instant" in out


def test_the_temporary_folder_is_removed_at_the_end(tmp_path: Path) -> None:
    folder = RunFolder.make(None, keep=False, parent=tmp_path)
    assert folder.path.name.startswith("gridm2m-demo-") and folder.path.is_dir()
    (folder.path / "headend.log").write_text("a log")
    folder.close(failed=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("keep", "failed"), [(True, False), (False, True)])
def test_the_temporary_folder_stays_when_kept_or_when_the_run_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep: bool, failed: bool
) -> None:
    folder = RunFolder.make(None, keep=keep, parent=tmp_path)
    folder.close(failed=failed)
    assert folder.path.is_dir()
    assert f"{folder.path} kept" in capsys.readouterr().out


def test_a_data_dir_given_is_never_removed(tmp_path: Path) -> None:
    folder = RunFolder.make(tmp_path / "mine", keep=False)
    folder.close(failed=False)
    assert (tmp_path / "mine").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True])
def test_a_demo_run_leaves_its_folder_only_with_keep(tmp_path: Path, keep: bool) -> None:
    """The real command, briefly: CoAP meters only, any dashboard port, TMPDIR in tmp_path."""
    args = ["demo", "--meters", "2", "--duration", "2", "--broker", "none"]
    args += ["--dashboard-port", "0", *(["--keep"] if keep else [])]
    result = subprocess.run(
        [sys.executable, "-m", "gridm2m", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lost 0" in result.stdout
    left = [path.name for path in tmp_path.iterdir()]
    assert len(left) == (1 if keep else 0), left
    assert all(name.startswith("gridm2m-demo-") for name in left)
