"""What ``python -m worker --config`` sets up before importing the service.

The stop-signal latch (signals before trio listens) and grpc's log level.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence

import pytest

import worker.cli
from worker import signal_latch
from worker.logging_setup import quiet_grpc_core
from worker.signal_latch import STOP_SIGNALS, install_latch


@pytest.fixture(autouse=True)
def restore_handlers() -> Iterator[None]:
    """Give the test process its own handlers (and a fresh latch) back afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    latch = signal_latch._LATCH
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    signal_latch._LATCH = latch


def test_latch_keeps_stop_signals_in_order_until_taken() -> None:
    signal_latch._LATCH = None
    latch = install_latch()
    signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: recorded instead
    assert latch.take() == (signal.SIGTERM, signal.SIGINT)
    assert latch.take() == ()
    signal.raise_signal(signal.SIGTERM)
    assert install_latch() is latch  # reinstalling keeps what was recorded
    assert latch.take() == (signal.SIGTERM,)


def test_cli_installs_the_latch_before_importing_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signal_latch._LATCH = None
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    seen: list[object] = []

    def load(target: str) -> object:
        seen.append(signal.getsignal(signal.SIGTERM))

        def command(_argv: Sequence[str]) -> int:
            return 0

        return command

    monkeypatch.setattr(worker.cli, "_load", load)
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    assert worker.cli.main(["--config", "unused.yaml"]) == 0
    latch = signal_latch._LATCH
    assert latch is not None
    assert seen == [latch._record]
    # grpc's C core reads this at import, i.e. inside the service module's import.
    assert os.environ["GRPC_VERBOSITY"] == "ERROR"


def test_an_operator_choice_of_grpc_verbosity_is_kept() -> None:
    environ = {"GRPC_VERBOSITY": "DEBUG"}
    quiet_grpc_core(environ)
    assert environ == {"GRPC_VERBOSITY": "DEBUG"}
    unset: dict[str, str] = {}
    quiet_grpc_core(unset)
    assert unset == {"GRPC_VERBOSITY": "ERROR"}
