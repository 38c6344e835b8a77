"""The Celery application of the bulk jobs (`celery -A lrface.service.celery_app worker`), configured from Settings."""
from __future__ import annotations

import logging

from celery import Celery, signals

from lrface.service.settings import Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    broker = settings.broker_url or "redis://127.0.0.1:6379/0"
    vt = settings.broker_visibility_timeout
    app = Celery("lrface", broker=broker, include=["lrface.service.tasks"])
    app.conf.update(
        # A task is acknowledged only after it ran, and a worker that dies mid-task gives it back: every
        # task is idempotent (outputs are skipped when present, a chunk is counted once), so redelivery is harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_transport_options={
            # A task held by a worker that vanished (SIGKILL, lost machine) is handed out again after this.
            "visibility_timeout": vt,
            # Sweep for such tasks often enough that a short visibility timeout means a short wait.
            "unacked_restore_interval": max(1, min(10, vt // 4)),
            "unacked_restore_throttle": 1 if vt < 600 else 10,
            # Handing tasks back runs under a Redis lock that expires after this long (kombu's default is 300 s).
            # A worker killed while holding it would otherwise hold up every redelivery for 5 minutes, however
            # short the visibility timeout; a sweep takes milliseconds, and two overlapping sweeps are harmless
            # (each message is restored in a transaction).
            "unacked_mutex_expire": max(5, min(300, vt)),
        },
        task_routes={"lrface.*": {"queue": settings.queue}},
    )
    return app


@signals.setup_logging.connect
def _setup_logging(loglevel=None, **kwargs):
    """Workers log like the API (lrface.service.logs): JSON lines by default, with the task id as the request id."""
    from lrface.service.logs import configure_logging

    settings = get_settings()
    level = loglevel if isinstance(loglevel, str) else (logging.getLevelName(loglevel) if loglevel else settings.log_level)
    configure_logging(str(level), settings.log_format)


@signals.task_prerun.connect
def _task_started(task_id=None, **kwargs):
    from lrface.service.logs import request_id_var

    request_id_var.set(task_id)


@signals.task_postrun.connect
def _task_finished(**kwargs):
    from lrface.service.logs import request_id_var

    request_id_var.set(None)


app = make_celery(get_settings())
