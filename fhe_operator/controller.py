"""The operator's I/O shell: observe a batch, ask reconcile.plan, apply the plan.

Everything that talks to the API server or the database is here; every decision is in
``reconcile`` and ``validation``. One reconcile at a time per batch (a lock), and the
operator is the only writer of ``status`` (one merge patch, maps keyed by stage).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict
from typing import Any

import asyncpg
from kubernetes import client
from kubernetes.client.rest import ApiException

from coprocessor import metrics
from coprocessor.api.batch import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    FheBatchSpec,
    batch_id,
    describe_error,
)
from coprocessor.api.names import FINALIZER_RELEASE
from coprocessor.api.stages import BATCH_STAGES, group_of_label
from coprocessor.api.summary import read_termination_message
from coprocessor.db import queries
from coprocessor.db.rows import BatchAdmission
from coprocessor.errors import Recoverable, ServiceUnavailable
from coprocessor.fhe.engine import get_backend
from coprocessor.settings import Settings

from .jobs import (
    ANNOTATION_BATCH_ID,
    GPU_RESOURCE,
    LABEL_BATCH,
    LABEL_DEVICE,
    LABEL_STAGE,
    LABEL_STAGES,
    JobSettings,
    job_manifest,
)
from .probes import OperatorMetrics
from .reconcile import (
    RUNNING_PHASES,
    JobView,
    Observed,
    Plan,
    Progress,
    QueueEntry,
    budget_decision,
    capacity_decision,
    is_settled,
    owned_by_batch,
    plan,
    stage_views,
)
from .validation import Bounds, InvalidSpec, PlannedGraph, check_bounds, check_stages, plan_graph

log = logging.getLogger(__name__)
FINALIZER = FINALIZER_RELEASE  # ours: releases the batch in the database
NODE_CACHE_S = 30.0


def _parse_time(text: str | None) -> dt.datetime:
    if not text:
        return dt.datetime.now(dt.UTC)
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _as_dict(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    return api.sanitize_for_serialization(obj)


def job_view(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobView:
    """Summarise a Job and its pods (pure, so unit tests feed it API-shaped dicts)."""
    status = job.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = conditions.get("Failed")
    summary = None
    waiting = None
    finished = sorted(
        (
            term
            for pod in pods
            for cs in (pod.get("status") or {}).get("containerStatuses") or []
            if (term := (cs.get("state") or {}).get("terminated"))
        ),
        key=lambda t: t.get("finishedAt") or "",
    )
    if finished and isinstance(message := finished[-1].get("message"), str) and message:
        summary = read_termination_message(message)
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                waiting = f"pod unschedulable: {condition.get('message', '')}"[:300]
    # Pods too: a pod that exited 75 (waiting) is ignored by the Job's failure policy, so
    # the Job's own counters leave it out.
    attempts = max(
        (status.get("failed") or 0) + (status.get("succeeded") or 0) + (status.get("active") or 0),
        len(pods),
    )
    return JobView(
        name=job["metadata"]["name"],
        active=status.get("active") or 0,
        succeeded="Complete" in conditions,
        failed=failed is not None,
        failure_message=(f"{failed.get('reason')}: {failed.get('message')}" if failed else None),
        attempts=max(attempts, 1),
        started_at=status.get("startTime"),
        finished_at=status.get("completionTime") or (failed or {}).get("lastTransitionTime"),
        summary=summary,
        waiting=waiting,
    )


class Controller:
    def __init__(self, settings: Settings, api: client.ApiClient, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.api = api
        self.pool = pool
        self.custom = client.CustomObjectsApi(api)
        self.batch_api = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.job_settings = JobSettings(
            image=settings.job_image,
            config_map=settings.job_config_map,
            secret=settings.job_secret,
            send_secret=settings.job_send_secret,
            ttl_seconds_after_finished=settings.job_ttl_s,
            service_account=settings.job_service_account,
            key_cache_host_path=settings.job_key_cache_host_path,
        )
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        # One capacity decision per device class at a time, held until the Job it allows
        # exists: batches reconciled side by side would each count the others' Jobs as
        # not yet there and all start (seen: 4 running under a limit of 2).
        self._capacity_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._gpu_nodes: tuple[float, bool] | None = None
        self.observed = OperatorMetrics()
        self.bounds = Bounds(
            max_cost=settings.batch_max_cost,
            max_outputs=settings.batch_max_outputs,
            max_priority=settings.max_priority,
            priority_namespaces=frozenset({settings.namespace, *settings.priority_namespaces}),
        )

    async def _api(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """One Kubernetes API call, off the loop, bounded by FHE_KUBE_REQUEST_TIMEOUT_S: an
        API server that hangs defers this reconcile (Recoverable), it never stalls it."""
        import urllib3

        try:
            return await asyncio.to_thread(
                call, *args, _request_timeout=self.settings.kube_request_timeout_s, **kwargs
            )
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ServiceUnavailable("kubernetes", f"{type(error).__name__}: {error}") from None

    # --- entry points ----------------------------------------------------------------
    async def reconcile(self, namespace: str, name: str) -> Plan | None:
        async with self._locks[(namespace, name)]:
            try:
                with metrics.OPERATOR_RECONCILE_SECONDS.time():
                    return await self._reconcile(namespace, name)
            except Recoverable as error:  # retried by the next event or the timer
                log.warning(
                    "reconcile deferred",
                    extra={"fields": {"batch": f"{namespace}/{name}", "error": str(error)}},
                )
                return None

    async def release(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """The finalizer: record in the database that the resource is gone. Jobs go
        with their owner (garbage collector); computed results stay."""
        known = (body.get("status") or {}).get("batchId")
        if not known:
            try:
                known = batch_id(namespace, name, FheBatchSpec.model_validate(body["spec"]))
            except Exception:  # an invalid spec was never admitted
                return
        async with self.pool.acquire() as connection:
            released = await queries.release_batch(connection, known)
        log.info("batch released", extra={"fields": {"batch": known, "released": released}})

    # --- one pass --------------------------------------------------------------------
    async def _reconcile(self, namespace: str, name: str) -> Plan | None:
        body = await self._get_batch(namespace, name)
        if body is None:
            self.observed.phase(namespace, name, None)
            return None
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            self.observed.phase(namespace, name, None)
            if FINALIZER in finalizers:
                await self.release(namespace, name, body)
                await self._set_finalizers(body, [f for f in finalizers if f != FINALIZER])
            return None
        previous = body.get("status") or {}
        if is_settled(meta.get("generation", 1), previous):
            self.observed.phase(namespace, name, previous.get("phase"))
            return None
        if FINALIZER not in finalizers:
            await self._set_finalizers(body, [*finalizers, FINALIZER])
        now = dt.datetime.now(dt.UTC)
        spec, error, planned, tenant = await self._validate(namespace, name, body)
        ident = batch_id(namespace, name, spec) if spec and not error else None
        admitted, progress = False, None
        if ident:
            async with self.pool.acquire() as connection:
                if await queries.get_batch(connection, ident) is not None:
                    admitted = True
                    counts = await queries.batch_progress(connection, ident)
                    progress = Progress(counts.total, counts.completed, counts.failed)
        if spec and spec.graph is not None and planned and not error and not admitted:
            # Before admission only (a settings change never fails a batch already
            # running), and for inline graphs only: a listener's batch comes from host
            # transactions the host chain already bounded (HCU), and refusing it would
            # leave their handles uncomputed.
            try:
                check_bounds(spec, planned, namespace, self.bounds)
            except InvalidSpec as invalid:
                error, planned = str(invalid), None
        jobs = await self._job_views(namespace, name, ident) if admitted else {}
        device = await self._device(spec) if spec else "cpu"
        wants_capacity = bool(
            spec and admitted and "compute" not in jobs and not spec.suspend and not error
        )
        # Decided and carried out under the device's lock when this batch wants to start
        # computing, so a second batch counts the Job this one creates.
        capacity_lock = self._capacity_locks[device] if wants_capacity else None
        if capacity_lock is not None:
            await capacity_lock.acquire()
        try:
            may_start, wait_reason = True, None
            if wants_capacity:
                assert spec is not None
                may_start, wait_reason = await self._capacity(
                    namespace, name, meta, spec, device, planned.cost if planned else 0
                )
            observed = Observed(
                generation=meta.get("generation", 1),
                created_at=_parse_time(meta.get("creationTimestamp")),
                now=now,
                spec=spec,
                spec_error=error,
                batch_id=ident,
                admitted=admitted,
                progress=progress,
                outputs=planned.outputs if planned else {},
                cost=planned.cost if planned else None,
                jobs=jobs,
                device=device,
                may_start=may_start,
                wait_reason=wait_reason,
                previous=previous,
                fuse=self.settings.job_fuse_stages,
            )
            result = plan(observed)
            if result.admit:
                assert spec is not None and tenant is not None and ident is not None
                assert planned is not None
                async with self.pool.acquire() as connection:
                    await queries.admit_batch(
                        connection,
                        BatchAdmission(
                            ident,
                            tenant.tenant_id,
                            namespace,
                            name,
                            spec.spec_hash(),
                            meta["uid"],
                            planned.rows,
                            frozenset(bytes.fromhex(h[2:]) for h in planned.outputs.values()),
                        ),
                    )
                log.info(
                    "batch admitted", extra={"fields": {"batch": ident, "rows": len(planned.rows)}}
                )
                return await self._reconcile(namespace, name)
            for group in result.create_jobs:
                await self._create_job(body, spec, ident, group, device, observed)
            await self._post_events(body, result.events)
            await self._write_status(namespace, name, previous, result.status)
            self.observed.phase(namespace, name, result.status.get("phase"))
            self.observed.status_written(previous, result.status)
            return result
        finally:
            if capacity_lock is not None:
                capacity_lock.release()

    async def _validate(self, namespace: str, name: str, body: dict[str, Any]):
        """(spec, error, planned graph, tenant): error is one line naming what is wrong."""
        try:
            spec = FheBatchSpec.model_validate(body.get("spec") or {})
        except Exception as invalid:
            return None, describe_error(invalid), None, None
        try:
            check_stages(spec.stages, BATCH_STAGES, spec.graph)
        except InvalidSpec as invalid:
            return spec, str(invalid), None, None
        async with self.pool.acquire() as connection:
            tenant = await queries.get_tenant(connection, spec.tenant)
            if tenant is None:
                return spec, f"tenant {spec.tenant!r} does not exist", None, None
            if not await queries.namespace_may_use(connection, tenant.tenant_id, namespace):
                return (
                    spec,
                    f"tenant {spec.tenant!r} is not bound to namespace {namespace!r}; its "
                    f"owner binds it with `fhectl tenant bind {spec.tenant} --namespace "
                    f"{namespace}`",
                    None,
                    None,
                )
            planned = None
            if spec.graph is not None:
                try:
                    planned = plan_graph(
                        spec.graph,
                        namespace=namespace,
                        name=name,
                        chain_id=tenant.chain_id,
                        backend=get_backend(tenant.backend),
                    )
                except (InvalidSpec, ValueError) as invalid:
                    return spec, str(invalid), None, tenant
                known = await queries.known_handles(connection, tenant.tenant_id, planned.inputs)
                for input_name, text in spec.graph.inputs.items():
                    if bytes.fromhex(text[2:]) not in known:
                        return (
                            spec,
                            (
                                f"input {input_name!r} ({text[:18]}...) exists nowhere: "
                                f"no ciphertext and no computation for tenant "
                                f"{spec.tenant!r}"
                            ),
                            planned,
                            tenant,
                        )
            elif spec.source is not None:
                rows = await queries.transaction_computations(
                    connection,
                    tenant.tenant_id,
                    [bytes.fromhex(t[2:]) for t in spec.source.transactions],
                )
                if not rows:
                    return (
                        spec,
                        "no computations in the database for the given transactions",
                        None,
                        tenant,
                    )
                planned = PlannedGraph(tuple(rows), {}, {}, ())
        return spec, None, planned, tenant

    # --- Kubernetes reads ------------------------------------------------------------
    async def _get_batch(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._api(
                self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def _job_views(self, namespace: str, name: str, ident: str | None) -> dict[str, JobView]:
        """This batch id's Jobs by stage; Jobs of an earlier spec of the same resource
        are not this batch's progress."""
        selector = f"{LABEL_BATCH}={name}"
        jobs = await self._api(
            self.batch_api.list_namespaced_job, namespace, label_selector=selector
        )
        pods = await self._api(self.core.list_namespaced_pod, namespace, label_selector=selector)
        pod_dicts = [_as_dict(self.api, p) for p in pods.items]
        views = {}
        for job in jobs.items:
            data = _as_dict(self.api, job)
            labels = data["metadata"]["labels"]
            stage = labels.get(LABEL_STAGE)
            annotations = data["metadata"].get("annotations") or {}
            if (
                data["metadata"].get("deletionTimestamp")
                or not stage
                or annotations.get(ANNOTATION_BATCH_ID) != ident
            ):
                continue
            mine = [
                p
                for p in pod_dicts
                if (p["metadata"].get("labels") or {}).get("job-name") == data["metadata"]["name"]
            ]
            group = group_of_label(labels.get(LABEL_STAGES), stage)
            views.update(stage_views(job_view(data, mine), group))
        return views

    async def _device(self, spec: FheBatchSpec) -> str:
        if spec.device != "auto":
            return spec.device
        now = time.monotonic()
        if self._gpu_nodes is None or now - self._gpu_nodes[0] > NODE_CACHE_S:
            nodes = await self._api(self.core.list_node)
            has_gpu = any(
                int((n.status.allocatable or {}).get(GPU_RESOURCE, "0")) > 0 for n in nodes.items
            )
            self._gpu_nodes = (now, has_gpu)
        return "gpu" if self._gpu_nodes[1] else "cpu"

    def _resolved(self, device: str) -> str:
        """A spec's device as _device resolves it, from the cached node view."""
        if device != "auto":
            return device
        return "gpu" if self._gpu_nodes and self._gpu_nodes[1] else "cpu"

    async def _capacity(
        self,
        namespace: str,
        name: str,
        meta: dict[str, Any],
        spec: FheBatchSpec,
        device: str,
        my_cost: int,
    ) -> tuple[bool, str | None]:
        limit = (
            self.settings.max_running_batches_gpu
            if device == "gpu"
            else self.settings.max_running_batches_cpu
        )
        budget = self.settings.namespace_max_running_cost
        if limit is None and budget is None:
            return True, None
        batches = await self._api(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        if budget is not None:
            running_cost = [
                (item.get("status") or {}).get("cost")
                for item in batches["items"]
                if item["metadata"].get("namespace") == namespace
                and item["metadata"].get("name") != name
                and (item.get("status") or {}).get("phase") in RUNNING_PHASES
            ]
            fits, why = budget_decision(my_cost, running_cost, budget, namespace)
            if not fits:
                return False, why
        if limit is None:
            return True, None
        jobs = await self._api(
            self.batch_api.list_job_for_all_namespaces,
            label_selector=f"{LABEL_STAGE}=compute,{LABEL_DEVICE}={device}",
        )
        # Labels can be set by anyone who may create a Job: only Jobs an existing
        # FheBatch owns (owner reference uid) take capacity.
        # A pod of several stages that has computed (its batch says so) squashes and
        # sends now: it no longer takes a computing slot.
        owners = {
            item["metadata"].get("uid")
            for item in batches["items"]
            if ((item.get("status") or {}).get("stages") or {}).get("compute", {}).get("state")
            != "Succeeded"
        }
        running = sum(
            1
            for j in jobs.items
            if owned_by_batch(
                [(r.kind, r.uid) for r in (j.metadata.owner_references or [])], owners
            )
            and (
                (j.status.active or 0) > 0
                or not any(
                    c.type in ("Complete", "Failed") and c.status == "True"
                    for c in j.status.conditions or []
                )
            )
        )
        waiting = []
        for item in batches["items"]:
            status = item.get("status") or {}
            item_spec = item.get("spec") or {}
            # A batch created but not yet validated (no phase) waits too, for the device
            # its spec asks: otherwise whichever is admitted first starts first.
            item_device = status.get("device") or self._resolved(item_spec.get("device", "auto"))
            if (
                status.get("phase") in (None, "", "Pending", "Admitted")
                and item_device == device
                and not item_spec.get("suspend")
            ):
                waiting.append(
                    QueueEntry(
                        f"{item['metadata']['namespace']}/{item['metadata']['name']}",
                        int((item.get("spec") or {}).get("priority", 0)),
                        _parse_time(item["metadata"].get("creationTimestamp")),
                    )
                )
        me = QueueEntry(
            f"{namespace}/{name}", spec.priority, _parse_time(meta.get("creationTimestamp"))
        )
        return capacity_decision(me, waiting, running, limit, device)

    # --- Kubernetes writes -----------------------------------------------------------
    async def _set_finalizers(self, body: dict[str, Any], finalizers: list[str]) -> None:
        """Replace the list, guarded by resourceVersion: a concurrent change (kopf's own
        finalizer) makes this a 409, and the next reconcile tries again."""
        meta = body["metadata"]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        try:
            await self._api(
                self.custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                meta["namespace"],
                PLURAL,
                meta["name"],
                patch,
            )
        except ApiException as error:
            if error.status not in (404, 409):
                raise
            raise ServiceUnavailable(
                "kube-apiserver", f"finalizer update raced: {error.reason}"
            ) from None

    async def _create_job(
        self,
        body: dict[str, Any],
        spec,
        ident,
        stages: tuple[str, ...],
        device: str,
        observed: Observed,
    ) -> None:
        meta = body["metadata"]
        elapsed = (observed.now - observed.created_at).total_seconds()
        manifest = job_manifest(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            batch_id=ident,
            spec=spec,
            stages=stages,
            device=device,
            settings=self.job_settings,
            remaining_seconds=int(spec.deadline_seconds - elapsed),
        )
        try:
            await self._api(self.batch_api.create_namespaced_job, meta["namespace"], manifest)
            for stage in stages:
                self.observed.job_started(stage)
            log.info(
                "job created",
                extra={
                    "fields": {
                        "job": manifest["metadata"]["name"],
                        "batch": ident,
                        "stages": ",".join(stages),
                    }
                },
            )
        except ApiException as error:
            if error.status != 409:  # 409: it exists (restart, lost response): fine
                raise

    async def _post_events(self, body: dict[str, Any], events) -> None:
        meta = body["metadata"]
        for kind, reason, message in events:
            now = dt.datetime.now(dt.UTC)
            event = {
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                },
                "type": kind,
                "reason": reason,
                "message": message[:1000],
                "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "count": 1,
                "source": {"component": "fhe-operator"},
                "reportingComponent": "fhe-operator",
                "reportingInstance": "fhe-operator",
            }
            try:
                await self._api(self.core.create_namespaced_event, meta["namespace"], event)
            except (ApiException, ServiceUnavailable) as error:  # best effort, never a failure
                reason = error.reason if isinstance(error, ApiException) else error.detail
                log.warning("event not posted", extra={"fields": {"error": reason}})

    async def _write_status(
        self, namespace: str, name: str, previous: dict[str, Any], status: dict[str, Any]
    ) -> None:
        if {k: previous.get(k) for k in status} == status:
            return
        # Merge patch: keys we no longer report are set to null so they disappear.
        patch = {**{k: None for k in previous if k not in status}, **status}
        try:
            await self._api(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": patch},
            )
        except ApiException as error:
            if error.status != 404:
                raise
        if status["phase"] != previous.get("phase"):
            log.info(
                "phase",
                extra={
                    "fields": {
                        "batch": f"{namespace}/{name}",
                        "phase": status["phase"],
                        "message": status["message"],
                    }
                },
            )
