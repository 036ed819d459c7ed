"""The vCPU thread's one state, moved by events (``acrn.emu.runtime.RunnerState``)."""

from __future__ import annotations

import pytest

from acrn.emu.runtime import RUNNER_TRANSITIONS, RunnerEvent, RunnerState

S, E = RunnerState, RunnerEvent


def after(state: RunnerState, *events: RunnerEvent) -> RunnerState:
    for event in events:
        state = RUNNER_TRANSITIONS[event].get(state, state)
    return state


def test_a_created_vcpu_loads_its_state_at_start_then_runs() -> None:
    assert after(S.RESET, E.START) is S.LOADING
    assert after(S.RESET, E.START, E.LOADED) is S.RUNNING


def test_pause_and_start_resume_without_loading_again() -> None:
    assert after(S.RUNNING, E.PAUSE) is S.PAUSED
    assert after(S.RUNNING, E.PAUSE, E.START) is S.RUNNING


def test_a_pause_before_the_state_was_loaded_keeps_the_load_for_the_next_start() -> None:
    assert after(S.LOADING, E.PAUSE, E.LOADED) is S.RESET
    assert after(S.LOADING, E.PAUSE, E.LOADED, E.START) is S.LOADING


def test_a_stopped_vcpu_waits_for_reset_whatever_starts_it_gets() -> None:
    assert after(S.RUNNING, E.STOP, E.START, E.PAUSE, E.START) is S.STOPPED
    assert after(S.RUNNING, E.STOP, E.PAUSE, E.RESET, E.START) is S.LOADING


def test_a_stop_that_arrives_after_a_reset_does_not_keep_the_next_boot_parked() -> None:
    assert after(S.RUNNING, E.PAUSE, E.RESET, E.STOP, E.START) is S.LOADING


@pytest.mark.parametrize("state", list(RunnerState))
def test_destroy_ends_every_state_and_nothing_leaves_quit(state: RunnerState) -> None:
    assert after(state, E.DESTROY) is S.QUIT
    for event in RunnerEvent:
        assert after(S.QUIT, event) is S.QUIT
