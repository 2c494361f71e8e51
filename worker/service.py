"""``python -m worker --config FILE``: run one worker against a cluster until a signal.

Boot order (protocol.md section 6.1): validate the configuration (a bad file is one line on
stderr and exit 2, before any connection or executor); set up logging; open the executor pool;
connect to both servers (bounded by ``grpc.rpc_timeout_sec``; connecting sends no RPC; failure
is exit 1); the runtime registers and serves. SIGTERM or SIGINT drains, a second one forces the
stop; the exit code is the runtime's (section 6.11). The pool and the channels are closed on
exit. A stop signal that arrives before trio listens is kept by ``worker.signal_latch`` and
acted on as soon as trio does (a signal during boot aborts it: exit 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from worker.command_line import add_worker_options, command_parser, invoked_prog, log_level
from worker.config import ConfigError, WorkerConfig, load_config
from worker.core.decisions import POOL_BROKEN_CAUSES, exit_code_for
from worker.core.ports import Executor, LivenessClient, SchedulerClient, StorageClient
from worker.errors import ExecutorPoolError, PoolInitError
from worker.executor.pool import open_pool
from worker.exit_codes import ExitCode
from worker.logging_setup import configure_logging
from worker.runtime.runtime import WorkerRuntime
from worker.security import make_non_dumpable
from worker.signal_latch import STOP_SIGNALS, SignalLatch, install_latch
from worker.transport.connections import ClusterConnections, ConnectFailed

if TYPE_CHECKING:  # the metrics modules load only when `metrics` is configured
    from worker.metrics import WorkerMetrics
    from worker.metrics.instrumented import PortInstruments
    from worker.metrics.observer import MetricsObserver

__all__ = ["main", "run_worker"]

logger = logging.getLogger("worker.service")


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        invoked_prog(),
        "Run one worker (execution manager) against a Spider-protocol cluster. SIGTERM/SIGINT"
        " drains (the running task finishes and is reported, then Shutdown); a second signal"
        " forces the stop.",
        examples=["--config worker.yaml", "-c worker.yaml --log-level debug"],
        exit_codes="0 drained, 1 fatal, 2 bad configuration, 3 forced, 4 evicted",
        config_file=True,
    )
    add_worker_options(parser, required=True)
    return parser


@asynccontextmanager
async def _already_open(executor: Executor) -> AsyncIterator[Executor]:
    """Hand the runtime the pool this module opened (and will close)."""
    yield executor


class _Stopper:
    """Routes signals: during boot the first one aborts the boot; later the runtime decides."""

    def __init__(self, boot: trio.CancelScope) -> None:
        self._boot = boot
        self._request_stop: Callable[[], None] | None = None
        self.stopped_during_boot = False

    def hand_over(self, request_stop: Callable[[], None]) -> None:
        """From now on signals go to the runtime (drain, then force)."""
        self._request_stop = request_stop

    def __call__(self) -> None:
        if self._request_stop is not None:
            self._request_stop()
        elif not self.stopped_during_boot:
            self.stopped_during_boot = True
            self._boot.cancel()


def _on_signal(signum: int, stop: Callable[[], None], *, early: bool = False) -> None:
    fields = {"signal": signal.Signals(signum).name, "before_trio": early}
    logger.info("signal received", extra={"fields": fields})
    stop()


async def _forward_signals(
    stop: Callable[[], None], latch: SignalLatch | None, *, task_status: trio.TaskStatus[None]
) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        task_status.started()
        # Trio listens now: signals the latch kept until here are handled first, in order.
        for signum in latch.take() if latch is not None else ():
            _on_signal(signum, stop, early=True)
        async for signum in signals:
            _on_signal(signum, stop)


async def run_worker(
    config: WorkerConfig,
    latch: SignalLatch | None = None,
    *,
    instruments: PortInstruments | None = None,
    observer: MetricsObserver | None = None,
) -> ExitCode:
    """Run one worker with ``config`` until it stops; return its exit code.

    The pool and the channels belong to this function: the pool starts first, then both
    servers are connected (no RPC), then the runtime registers and serves; both are closed
    after the runtime returned. A signal before the runtime took over aborts the boot: exit 0.
    Signals recorded by ``latch`` before trio listened count as arriving at the start.
    With ``instruments``, the runtime's ports are the instrumented ones and a stop signal
    ends readiness before the runtime hears of it; ``observer`` receives the core's notices.
    """
    connections = ClusterConnections(
        storage=(config.storage.host, config.storage.port),
        scheduler=(config.scheduler.host, config.scheduler.port),
        pool_size=config.connection_pool_size,
        options=config.to_channel_options(),
        rpc_timeout_sec=config.grpc.rpc_timeout_sec,
    )
    try:
        async with trio.open_nursery() as signals:
            try:
                # Everything nests inside `boot`; only a signal before the hand-over cancels it.
                with trio.CancelScope() as boot:
                    stopper = _Stopper(boot)
                    await signals.start(
                        _forward_signals, _observed_stop(stopper, instruments), latch
                    )
                    return await _serve(config, connections, stopper, instruments, observer)
                logger.info("stopped during boot: nothing was registered")
                return ExitCode.OK
            finally:
                # Only now, outside `boot`: cancelling an outer scope earlier would swallow
                # boot's own cancellation (and the exit code with it).
                signals.cancel_scope.cancel()
    finally:
        connections.close()


async def _serve(
    config: WorkerConfig,
    connections: ClusterConnections,
    stopper: _Stopper,
    instruments: PortInstruments | None = None,
    observer: MetricsObserver | None = None,
) -> ExitCode:
    try:
        async with open_pool(config.to_pool_settings()) as pool:
            logger.info(
                "connecting",
                extra={
                    "fields": {
                        "storage": config.storage.target,
                        "scheduler": config.scheduler.target,
                        "within_sec": config.grpc.rpc_timeout_sec,
                    }
                },
            )
            try:
                await connections.wait_ready(config.grpc.rpc_timeout_sec)
            except ConnectFailed as error:
                logger.error("boot failed: %s", error)
                return ExitCode.FATAL
            logger.info(
                "connected",
                extra={
                    "fields": {
                        "storage": config.storage.target,
                        "scheduler": config.scheduler.target,
                    }
                },
            )
            # The pool stays ours rather than the runtime's: section 6.1 orders pool -> connect
            # -> register, and connecting happens here, between the two (the runtime would open
            # the pool right before registering, after the connect).
            scheduler: SchedulerClient = connections.scheduler
            storage: StorageClient = connections.storage
            liveness: LivenessClient = connections.liveness
            executor: Executor = pool
            if instruments is not None:
                scheduler, storage, liveness, executor = (
                    instruments.scheduler(scheduler),
                    instruments.storage(storage),
                    instruments.liveness(liveness),
                    instruments.executor(executor),
                )
            runtime = WorkerRuntime(
                config.to_runtime_settings(),
                scheduler=scheduler,
                storage=storage,
                liveness=liveness,
                open_executor=lambda: _already_open(executor),
                observer=observer,
            )
            stopper.hand_over(runtime.request_stop)
            return await runtime.run()
    except ExecutorPoolError as error:
        if stopper.stopped_during_boot:
            return ExitCode.OK  # the signal interrupted the executors' start
        if not isinstance(error, PoolInitError):
            # Broken while serving or closing (e.g. its log sink failed): the core's rule for a
            # broken pool, whose fatal cause outranks whatever the runtime would have returned.
            logger.error("executor pool failed: %s", error)
            return exit_code_for(POOL_BROKEN_CAUSES)
        bin_path = config.task_executor.bin_path
        if bin_path is not None:
            # Spider's native executor speaks another framing: say which key to look at.
            logger.error(
                "executor pool failed to start: %s (task_executor.bin_path %s must speak this"
                " worker's executor channel; Spider's native executor needs"
                " task_executor.protocol: spider, which is not implemented)",
                error,
                bin_path,
            )
        else:
            logger.error("executor pool failed to start: %s", error)
        return ExitCode.FATAL


# --- Metrics (protocol.md 6.13): instrumented ports, the core's observer, watchdog, fault hook -


def _observed_stop(
    stop: Callable[[], None], instruments: PortInstruments | None
) -> Callable[[], None]:
    """``stop``, telling ``instruments`` first that draining begins (readiness ends)."""
    if instruments is None:
        return stop

    def observed() -> None:
        instruments.draining_began()
        stop()

    return observed


async def _run_with_metrics(
    config: WorkerConfig,
    latch: SignalLatch | None,
    metrics: WorkerMetrics,
    observer: MetricsObserver,
    block_loop_sec: float | None,
) -> ExitCode:
    """``run_worker`` with instrumented ports and ``observer``, the watchdog ticking beside."""
    from worker.metrics import run_watchdog
    from worker.metrics.faults import block_loop_after_registration
    from worker.metrics.instrumented import PortInstruments

    instruments = PortInstruments(metrics)
    async with trio.open_nursery() as beside:
        beside.start_soon(run_watchdog, metrics.health)
        if block_loop_sec is not None:
            beside.start_soon(block_loop_after_registration, instruments, block_loop_sec)
        code = await run_worker(config, latch, instruments=instruments, observer=observer)
        beside.cancel_scope.cancel()
    return code


def main(argv: Sequence[str]) -> int:
    """``python -m worker --config FILE``: the process exit code."""
    latch = install_latch()  # usually already installed by worker.cli, before this import
    # First: tasks and other processes of this user must not read our environment or memory.
    make_non_dumpable()
    parser = _parser()
    try:
        arguments = parser.parse_args(list(argv))
    except SystemExit as exit_request:  # --help (0) or a bad command line (2)
        return int(exit_request.code or 0)
    try:
        loaded = load_config(arguments.config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return ExitCode.CONFIG
    config = loaded.config
    level = log_level(parser, arguments.log_level, config.log.level)
    chosen_format = configure_logging(config.log.format, level)
    for key in loaded.unknown_keys:
        logger.warning("unknown config key ignored: %s", key, extra={"fields": {"key": key}})
    logger.info(
        "worker starting",
        extra={
            "fields": {
                "config": str(arguments.config),
                "storage": config.storage.target,
                "scheduler": config.scheduler.target,
                "log_format": chosen_format,
                "log_level": level,
                "env_overrides": list(loaded.environment_overrides),
            }
        },
    )
    metrics_server = None
    if config.metrics is not None:  # bound before the pool starts and before registering
        from worker.metrics import MetricsBindError, WorkerMetrics, serve_metrics
        from worker.metrics.faults import FaultHookError, block_loop_seconds

        try:
            block_loop_sec = block_loop_seconds()
        except FaultHookError as error:
            print(error, file=sys.stderr)
            return ExitCode.CONFIG
        from worker.metrics.observer import MetricsObserver

        metrics = WorkerMetrics(slots=config.slots)
        observer = MetricsObserver(metrics, slots=config.slots)
        try:
            metrics_server = serve_metrics(
                config.metrics.host, config.metrics.port, metrics, observer.assignments
            )
        except MetricsBindError as error:
            logger.error("boot failed: %s", error)
            return ExitCode.FATAL
    try:
        if metrics_server is None:
            code = trio.run(run_worker, config, latch)
        else:
            code = trio.run(_run_with_metrics, config, latch, metrics, observer, block_loop_sec)
    except Exception:
        logger.critical("internal error", exc_info=True)
        return ExitCode.FATAL
    finally:
        if metrics_server is not None:
            metrics_server.close()
    logger.info("worker stopped", extra={"fields": {"exit_code": int(code)}})
    return int(code)
