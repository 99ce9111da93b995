"""Offline jobs' progress without a terminal: plain lines at an interval, never a tqdm ``\\r`` bar."""

from __future__ import annotations

import re

import pytest

from vqvdm_scale.monitor.progress import JobProgress, duration, is_terminal
from vqvdm_scale.prep.runner import progress_bar


def test_a_job_without_a_terminal_prints_plain_lines(capfd: pytest.CaptureFixture[str]) -> None:
    assert not is_terminal()  # pytest captures stdout and stderr: as in a Slurm job
    bar = progress_bar(400, "make_shards", True)
    assert isinstance(bar, JobProgress) and bar._bar is None
    bar.every_s = 0.0  # a line at every update (a job prints one a minute)
    bar.skip(100)  # finished by an earlier run: counted, but not in the rate, and no line
    bar._t0 -= 10.0  # as if it had run for 10 s
    bar.update(20)
    bar.close()
    out, err = capfd.readouterr()
    assert "\r" not in out + err and err == ""
    assert out == "[make_shards] 120/400 videos (30%) | 2.0 videos/s | ETA 2m 20s\n"


def test_lines_come_at_the_interval_and_not_at_all_when_off(capfd: pytest.CaptureFixture[str]) -> None:
    quiet = JobProgress(10, "encode_latents rank 0", enabled=True, every_s=3600.0)
    quiet.update(5)  # within the first hour: nothing yet
    assert capfd.readouterr().out == ""
    quiet.every_s = 0.0
    quiet.update(1)
    assert capfd.readouterr().out.startswith("[encode_latents rank 0] 6/10 videos (60%)")
    off = JobProgress(10, "sample rank 0", enabled=False, every_s=0.0)
    off.update(3)
    off.close()
    assert capfd.readouterr() == ("", "")


def test_an_unknown_total_shows_count_and_rate(capfd: pytest.CaptureFixture[str]) -> None:
    bar = JobProgress(None, "encode_latents rank 1", unit="window", every_s=0.0)
    bar.update(7)
    assert re.fullmatch(r"\[encode_latents rank 1\] 7 windows \| [\d.]+ windows/s\n", capfd.readouterr().out)


def test_durations_read_as_people_write_them() -> None:
    assert [duration(s) for s in (0.4, 59, 725, 10920)] == ["0s", "59s", "12m 05s", "3h 02m"]
