"""kopf handlers: thin. Each one only says *when* to reconcile; ``Controller`` says how.

* any watch event of a FheBatch (create, update, the initial listing after a restart);
* any event of a Job labelled with a batch (a pod finished, the Job completed);
* a timer per batch, so a lost event or a failed pass is repaired within
  ``operator_resync_s``.

Deletion needs no handler of its own: the controller keeps its own finalizer on each
batch and, on the event that carries the deletion timestamp, releases the batch in the
database and removes it. (kopf's on.delete runs after the on.event handlers of the
same event cycle, so one slow reconcile could delay the finalizer being added at all.)
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from coprocessor.api.batch import GROUP, PLURAL, VERSION
from coprocessor.api.kube import api_client
from coprocessor.api.names import FINALIZER_KOPF, LABEL_BATCH
from coprocessor.db.pool import pool_of
from coprocessor.settings import load_settings

from .controller import Controller
from .reconcile import is_settled

log = logging.getLogger(__name__)
RESOURCE = (GROUP, VERSION, PLURAL)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours = load_settings()
    # kopf keeps its own bookkeeping in annotations: status belongs to us alone.
    settings.persistence.finalizer = FINALIZER_KOPF
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # A watch that dies silently is reconnected (docs/design.md section 10).
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.posting.level = logging.WARNING
    api = api_client(ours.kubeconfig)
    pool = await pool_of(ours)
    memo["controller"] = Controller(ours, api, pool)
    log.info("operator started", extra={"fields": {"resync_s": ours.operator_resync_s}})


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.pool.close()


@kopf.on.event(*RESOURCE)
async def batch_event(
    event: dict[str, Any], namespace: str, name: str, memo: kopf.Memo, **_: Any
) -> None:
    if event.get("type") != "DELETED":  # the last event, after every finalizer is gone
        await memo["controller"].reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_BATCH: kopf.PRESENT})
async def job_event(namespace: str, labels: dict[str, str], memo: kopf.Memo, **_: Any) -> None:
    await memo["controller"].reconcile(namespace, labels[LABEL_BATCH])


def _unsettled(meta: kopf.Meta, status: kopf.Status, **_: Any) -> bool:
    """A finished batch is not reconciled on the timer (docs: reconcile.is_settled)."""
    return not is_settled(meta.get("generation", 1), dict(status))


@kopf.timer(*RESOURCE, interval=load_settings().operator_resync_s, sharp=False, when=_unsettled)
async def resync(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    await memo["controller"].reconcile(namespace, name)
