"""Outcome reporting (protocol.md section 6.8): one task per report, retried on transport errors.

A reporter runs in the runtime's report nursery, never in the main loop, so reporting never
delays the next poll. Before every attempt it re-checks gate 2 (``tracker > s`` drops the report).
A cancelled reporter (forced stop, drain deadline) logs the abandoned report at ERROR with ids.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from worker.core.backoff import Backoff, BackoffPolicy
from worker.core.decisions import ReportVerdict, classify_report_error, is_reportable
from worker.core.ports import StorageClient
from worker.core.session import SessionTracker
from worker.core.story import AssignmentKey, key_text
from worker.errors import ProtocolError, RpcError
from worker.model import FailureReport, SuccessReport

__all__ = ["Reporter"]

logger = logging.getLogger("worker.reporting")

StoryNote = Callable[[AssignmentKey, str, str], None]


def _fields(key: AssignmentKey, report: SuccessReport | FailureReport) -> dict[str, object]:
    return {
        "assignment": key_text(key),
        "job_id": report.job_id,
        "task_id": str(report.task_id),
        "task_instance_id": report.task_instance_id,
        "session": report.session_id,
        "kind": _kind(report),
    }


def _kind(report: SuccessReport | FailureReport) -> str:
    return "success" if isinstance(report, SuccessReport) else "failure"


class Reporter:
    """Sends one report per outcome, with the retry and drop rules of section 6.8."""

    def __init__(
        self,
        storage: StorageClient,
        tracker: SessionTracker,
        policy: BackoffPolicy,
        rng: random.Random,
        note: StoryNote,
    ) -> None:
        self._storage = storage
        self._tracker = tracker
        self._policy = policy
        self._rng = rng
        self._note = note

    async def deliver(self, key: AssignmentKey, report: SuccessReport | FailureReport) -> None:
        """Send ``report`` until it lands, is final, or turns stale; log if abandoned."""
        backoff: Backoff | None = None  # made at the first retry: most reports land at once
        try:
            while True:
                if not is_reportable(report.session_id, self._tracker.current):
                    logger.info(
                        "report dropped: session advanced", extra={"fields": _fields(key, report)}
                    )
                    self._note(key, "report dropped", "session advanced")
                    return
                try:
                    if isinstance(report, SuccessReport):
                        await self._storage.report_task_success(report)
                    else:
                        await self._storage.report_task_failure(report)
                except (RpcError, ProtocolError) as error:
                    verdict = classify_report_error(error)
                    fields = {**_fields(key, report), "error": str(error)}
                    if verdict is ReportVerdict.RETRY:
                        logger.warning("report failed, retrying", extra={"fields": fields})
                        self._note(key, "report attempt failed", str(error))
                        if backoff is None:
                            backoff = Backoff(self._policy, self._rng)
                        await trio.sleep(backoff.next_delay())
                        continue
                    log = logger.warning if verdict is ReportVerdict.FINAL_STALE else logger.error
                    log("report rejected (final)", extra={"fields": fields})
                    self._note(key, "report rejected", str(error))
                    return
                if logger.isEnabledFor(logging.DEBUG):  # the task end is INFO
                    logger.debug("report sent", extra={"fields": _fields(key, report)})
                self._note(key, "reported", _kind(report))
                return
        except trio.Cancelled:
            logger.error(
                "report abandoned by a forced stop", extra={"fields": _fields(key, report)}
            )
            self._note(key, "report abandoned", "forced stop")
            raise
