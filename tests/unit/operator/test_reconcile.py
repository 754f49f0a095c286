"""The phase machine as tables: spec x observed Jobs x database counts -> actions."""

import datetime as dt

import pytest

from coprocessor.api.batch import FheBatchSpec
from fhe_operator.controller import job_view
from fhe_operator.jobs import JobSettings, job_manifest, job_name
from fhe_operator.reconcile import (
    JobView,
    Observed,
    Progress,
    QueueEntry,
    capacity_decision,
    plan,
)

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def spec(**extra) -> FheBatchSpec:
    return FheBatchSpec.model_validate(
        {
            "tenant": "acme",
            "graph": {"nodes": [{"name": "x", "op": "FheNot", "args": ["a"]}]},
            **extra,
        }
    )


def observed(**kw) -> Observed:
    base = dict(
        generation=2,
        created_at=T0,
        now=T0 + dt.timedelta(seconds=10),
        spec=spec(),
        batch_id="fhe/b@1",
        admitted=True,
        progress=Progress(3, 0, 0),
    )
    base.update(kw)
    return Observed(**base)


RUNNING = JobView("b-compute", active=1)
DONE = JobView("b-compute", succeeded=True, summary={"completed": 3, "failed": 0})
FAILED = JobView(
    "b-compute",
    failed=True,
    failure_message="PodFailurePolicy: exit 3",
    summary={"error": "1 computation(s) failed; 0xab: bad bytes"},
)


@pytest.mark.parametrize(
    ("case", "phase", "admit", "create", "message"),
    [
        (dict(spec=None, spec_error="spec.tenant: bad"), "Failed", False, [], "spec.tenant: bad"),
        (dict(admitted=False, progress=None), "Pending", True, [], "admitting"),
        (dict(), "Computing", False, [("compute",)], "starting stage compute"),
        (dict(jobs={"compute": RUNNING}), "Computing", False, [], "computing: 0/3 computed"),
        (
            dict(jobs={"compute": DONE}, progress=Progress(3, 3, 0)),
            "Succeeded",
            False,
            [],
            "3/3 computed",
        ),
        (dict(jobs={"compute": FAILED}), "Failed", False, [], "bad bytes"),
        (dict(spec=spec(suspend=True)), "Suspended", False, [], "suspended before stage compute"),
        (
            dict(spec=spec(suspend=True), jobs={"compute": RUNNING}),
            "Computing",
            False,
            [],
            "suspended: no new Jobs",
        ),
        (
            dict(may_start=False, wait_reason="waiting for capacity: 2 of 2 gpu"),
            "Admitted",
            False,
            [],
            "waiting for capacity",
        ),
        (dict(now=T0 + dt.timedelta(hours=2)), "Failed", False, [], "deadline of 3600s passed"),
        (
            dict(
                jobs={
                    "compute": JobView(
                        "b-compute",
                        active=0,
                        waiting="pod unschedulable: 0/2 "
                        "nodes are available: Insufficient nvidia.com/gpu",
                    )
                }
            ),
            "Computing",
            False,
            [],
            "Insufficient nvidia.com/gpu",
        ),
    ],
)
def test_phase_table(case, phase, admit, create, message):
    check_plan(case, phase, admit, create, message)


TWO_STAGES = spec(stages=["compute", "sns"])
SNS_RUNNING = JobView("b-sns", active=1)
SNS_DONE = JobView(
    "b-sns", succeeded=True, summary={"total": 1, "completed": 1, "uploaded": 2, "failed": 0}
)
SNS_FAILED = JobView(
    "b-sns",
    failed=True,
    summary={"error": "s3 is unavailable: connection refused (0/1 published; a re-run continues)"},
)


@pytest.mark.parametrize(
    ("case", "phase", "admit", "create", "message"),
    [
        (dict(jobs={"compute": RUNNING}), "Computing", False, [], "computing"),
        (
            dict(jobs={"compute": DONE}, progress=Progress(3, 3, 0)),
            "Squashing",
            False,
            [("sns",)],
            "starting stage sns",
        ),
        (
            dict(jobs={"compute": DONE, "sns": SNS_RUNNING}),
            "Squashing",
            False,
            [],
            "squashing and uploading",
        ),
        (
            dict(jobs={"compute": DONE, "sns": SNS_DONE}, progress=Progress(3, 3, 0)),
            "Succeeded",
            False,
            [],
            "3/3 computed; 1/1 outputs published",
        ),
        (
            dict(jobs={"compute": DONE, "sns": SNS_FAILED}),
            "Failed",
            False,
            [],
            "stage sns failed: s3 is unavailable",
        ),
        (dict(jobs={"compute": FAILED}), "Failed", False, [], "stage compute failed"),
        # The capacity limit holds back compute only; a later stage starts at once.
        (
            dict(jobs={"compute": DONE}, may_start=False, wait_reason="waiting for capacity"),
            "Squashing",
            False,
            [("sns",)],
            "starting stage sns",
        ),
        (
            dict(jobs={"compute": DONE}, spec=spec(stages=["compute", "sns"], suspend=True)),
            "Suspended",
            False,
            [],
            "suspended before stage sns",
        ),
    ],
)
def test_two_stage_table(case, phase, admit, create, message):
    check_plan({"spec": TWO_STAGES, **case}, phase, admit, create, message)


THREE_STAGES = spec(stages=["compute", "sns", "send"])
SEND_RUNNING = JobView("b-send", active=1)
SEND_DONE = JobView(
    "b-send",
    succeeded=True,
    summary={
        "total": 3,
        "completed": 3,
        "sent": 3,
        "transactions": 2,
        "accepted": 3,
        "failed": 0,
        "signer": "0xabc",
        "gas_used": 1,
    },
)
SEND_FAILED = JobView(
    "b-send",
    failed=True,
    summary={
        "error": "0xabc is not a registered coprocessor tx sender of the gateway's GatewayConfig"
    },
)


@pytest.mark.parametrize(
    ("case", "phase", "admit", "create", "message"),
    [
        # Published is not enough: the batch waits for its commits on the gateway chain.
        (
            dict(jobs={"compute": DONE, "sns": SNS_DONE}),
            "Sending",
            False,
            [("send",)],
            "starting stage send",
        ),
        (
            dict(jobs={"compute": DONE, "sns": SNS_DONE, "send": SEND_RUNNING}),
            "Sending",
            False,
            [],
            "committing the outputs' digests to the gateway chain",
        ),
        (
            dict(
                jobs={"compute": DONE, "sns": SNS_DONE, "send": SEND_DONE},
                progress=Progress(3, 3, 0),
            ),
            "Succeeded",
            False,
            [],
            "1/1 outputs published; 3/3 sent to the gateway in 2 transaction(s)",
        ),
        (
            dict(jobs={"compute": DONE, "sns": SNS_DONE, "send": SEND_FAILED}),
            "Failed",
            False,
            [],
            "stage send failed: 0xabc is not a registered coprocessor tx sender",
        ),
    ],
)
def test_three_stage_table(case, phase, admit, create, message):
    check_plan({"spec": THREE_STAGES, **case}, phase, admit, create, message)


def test_send_summary_shows_counts_but_not_the_signer_details():
    status = plan(
        observed(spec=THREE_STAGES, jobs={"compute": DONE, "sns": SNS_DONE, "send": SEND_DONE})
    ).status
    assert status["stages"]["send"]["summary"] == {
        "total": 3,
        "completed": 3,
        "sent": 3,
        "transactions": 2,
        "accepted": 3,
        "failed": 0,
    }


def check_plan(case, phase, admit, create, message):
    result = plan(observed(**case))
    assert (result.phase, result.admit, result.create_jobs) == (phase, admit, create)
    assert message in result.status["message"]
    assert result.status["observedGeneration"] == 2


def test_events_only_on_a_phase_change_and_job_creation():
    first = plan(observed())
    assert [e[1] for e in first.events] == ["Computing", "JobCreated"]
    again = plan(observed(jobs={"compute": RUNNING}, previous=first.status))
    assert again.events == []
    failed = plan(observed(jobs={"compute": FAILED}, previous=again.status))
    assert failed.events == [("Warning", "Failed", failed.status["message"])]


def test_status_reports_outputs_only_when_succeeded_and_keeps_transition_times():
    running = plan(observed(jobs={"compute": RUNNING}, outputs={"x": "0x01"}))
    assert running.status["outputs"] == {}
    later = observed(
        jobs={"compute": RUNNING}, previous=running.status, now=T0 + dt.timedelta(seconds=99)
    )
    assert plan(later).status["conditions"] == running.status["conditions"]
    done = plan(observed(jobs={"compute": DONE}, outputs={"x": "0x01"}, progress=Progress(3, 3, 0)))
    assert done.status["outputs"] == {"x": "0x01"} and done.status["done"] == "3/3"
    ready = {c["type"]: c["status"] for c in done.status["conditions"]}
    assert ready == {"Ready": "True", "Failed": "False", "Progressing": "False"}


def entry(name, priority=0, minute=0):
    return QueueEntry(name, priority, T0 + dt.timedelta(minutes=minute))


def test_capacity_goes_by_priority_then_age():
    queue = [entry("old", 0, 0), entry("new", 0, 5), entry("vip", 9, 9)]
    assert capacity_decision(entry("vip", 9, 9), queue, 1, 2, "gpu") == (True, None)
    allowed, why = capacity_decision(entry("new", 0, 5), queue, 1, 2, "gpu")
    assert not allowed and "1 of 2 gpu batches running, 1 waiting ahead" in why
    assert capacity_decision(entry("new", 0, 5), queue, 0, None, "gpu") == (True, None)


def test_job_manifest_for_gpu_has_limits_toleration_and_failure_policy():
    manifest = job_manifest(
        namespace="fhe",
        name="b",
        uid="u1",
        batch_id="fhe/b@1",
        spec=spec(parallelism=3),
        stages=("compute",),
        device="gpu",
        settings=JobSettings(),
        remaining_seconds=100,
    )
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert container["command"] == ["fhe-job", "compute", "--batch", "fhe/b@1", "--count", "3"]
    assert manifest["spec"]["completionMode"] == "Indexed"
    rules = manifest["spec"]["podFailurePolicy"]["rules"]
    assert (rules[0]["action"], rules[0]["onExitCodes"]["values"]) == ("FailJob", [3])
    # Waiting (exit 75) is retried without using up backoffLimit.
    assert (rules[1]["action"], rules[1]["onExitCodes"]["values"]) == ("Ignore", [75])
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == "u1"
    cpu = job_manifest(
        namespace="fhe",
        name="b",
        uid="u1",
        batch_id="fhe/b@1",
        spec=spec(),
        stages=("compute",),
        device="cpu",
        settings=JobSettings(),
        remaining_seconds=100,
    )
    assert (
        "nvidia.com/gpu"
        not in cpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


@pytest.mark.parametrize(
    ("stage", "on_gpus"), [("compute", True), ("sns", True), ("verify", False), ("send", False)]
)
def test_gpu_batches_compute_and_squash_on_their_gpus(stage, on_gpus):
    """The compute and SNS stages of a GPU batch ask for GPUs and are told to use them
    (FHE_COMPUTE_DEVICE=gpu); verify and send do no GPU work and ask for none; a CPU
    batch's stages never do."""

    def container(device, key_cache=None):
        pod = stage_pod(stage, JobSettings(key_cache_host_path=key_cache), device)
        return pod["containers"][0]

    for key_cache in (None, "/var/cache/fhe-keys"):
        gpu = container("gpu", key_cache)
        env = {e["name"]: e["value"] for e in gpu.get("env", [])}
        assert ("nvidia.com/gpu" in gpu["resources"]["limits"]) is on_gpus
        assert (env.get("FHE_COMPUTE_DEVICE") == "gpu") is on_gpus
        if key_cache and stage != "send":  # the cache's variable is kept beside it
            assert env["FHE_KEY_CACHE_DIR"] == key_cache
        cpu = container("cpu", key_cache)
        assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
        assert all(e["name"] != "FHE_COMPUTE_DEVICE" for e in cpu.get("env", []))


def test_job_names_stay_valid_and_deterministic():
    long = "b" * 70
    assert len(job_name(long, "compute")) <= 63
    assert job_name(long, "compute") == job_name(long, "compute")
    assert job_name(long, "compute").endswith("-compute")


def test_job_view_reads_conditions_termination_message_and_unschedulable_pods():
    job = {
        "metadata": {"name": "b-compute"},
        "status": {
            "failed": 1,
            "startTime": "t0",
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "PodFailurePolicy",
                    "message": "exit 3",
                    "lastTransitionTime": "t1",
                }
            ],
        },
    }
    pods = [
        {
            "metadata": {},
            "status": {
                "containerStatuses": [
                    {
                        "state": {
                            "terminated": {
                                "exitCode": 3,
                                "finishedAt": "t1",
                                "message": '{"completed": 1, "failed": 1, "error": "bad"}',
                            }
                        }
                    }
                ]
            },
        }
    ]
    view = job_view(job, pods)
    assert view.failed and view.summary["error"] == "bad" and view.finished_at == "t1"
    garbled = [
        {
            "metadata": {},
            "status": {
                "containerStatuses": [
                    {"state": {"terminated": {"message": "Traceback...\nValueError: boom"}}}
                ]
            },
        }
    ]
    assert job_view(job, garbled).summary == {"error": "ValueError: boom"}
    pending = [
        {
            "metadata": {},
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/2 nodes are available",
                    }
                ]
            },
        }
    ]
    view = job_view({"metadata": {"name": "j"}, "status": {"active": 1}}, pending)
    assert view.waiting == "pod unschedulable: 0/2 nodes are available"


def test_an_edited_spec_gets_its_own_job_and_the_same_spec_the_same_job():
    def name_for(batch_spec):
        return job_manifest(
            namespace="fhe",
            name="b",
            uid="u1",
            batch_id="fhe/b@1",
            spec=batch_spec,
            stages=("compute",),
            device="cpu",
            settings=JobSettings(),
            remaining_seconds=100,
        )["metadata"]["name"]

    edited = FheBatchSpec.model_validate(
        {"tenant": "acme", "graph": {"nodes": [{"name": "y", "op": "FheNot", "args": ["a"]}]}}
    )
    assert name_for(spec()) == name_for(spec(priority=3))
    assert name_for(spec()) != name_for(edited)


@pytest.mark.parametrize(
    ("generation", "status", "settled"),
    [
        (1, {"phase": "Succeeded", "observedGeneration": 1}, True),
        (1, {"phase": "Failed", "observedGeneration": 1}, True),
        (2, {"phase": "Succeeded", "observedGeneration": 1}, False),  # the spec was edited
        (1, {"phase": "Computing", "observedGeneration": 1}, False),
        (1, {}, False),
    ],
)
def test_a_finished_batch_is_settled_for_its_generation(generation, status, settled):
    from fhe_operator.reconcile import is_settled

    assert is_settled(generation, status) is settled


def test_only_jobs_an_existing_batch_owns_take_capacity():
    from fhe_operator.reconcile import owned_by_batch

    assert owned_by_batch([("FheBatch", "u1")], {"u1", "u2"})
    assert not owned_by_batch([], {"u1"})  # a Job someone labelled like ours
    assert not owned_by_batch([("FheBatch", "gone")], {"u1"})  # its batch was deleted
    assert not owned_by_batch([("Deployment", "u1")], {"u1"})


@pytest.mark.parametrize("stage", ["compute", "sns", "send"])
def test_stage_pods_get_only_what_their_stage_needs(stage):
    """No API token in any stage pod, a restricted security context, and the gateway
    keys' Secret only in send pods."""
    settings = JobSettings(secret="creds", send_secret="keys", service_account="fhe-job")
    pod = stage_pod(stage, settings)
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "fhe-job"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    secrets = [ref["secretRef"]["name"] for ref in container["envFrom"] if "secretRef" in ref]
    assert secrets == (["creds", "keys"] if stage == "send" else ["creds"])


def stage_pod(stage: str, settings: JobSettings, device: str = "cpu") -> dict:
    manifest = job_manifest(
        namespace="fhe",
        name="b",
        uid="u1",
        batch_id="fhe/b@1",
        spec=spec(),
        stages=(stage,),
        device=device,
        settings=settings,
        remaining_seconds=100,
    )
    return manifest["spec"]["template"]["spec"]


@pytest.mark.parametrize("stage", ["compute", "sns", "send"])
def test_stages_that_load_a_key_mount_the_node_key_cache(stage):
    """With FHE_JOB_KEY_CACHE_HOST_PATH, compute and SNS pods mount the node directory at
    the same path and are told to use it; send pods load no key and get neither."""
    pod = stage_pod(stage, JobSettings(key_cache_host_path="/var/cache/fhe-keys"))
    container = pod["containers"][0]
    if stage == "send":
        assert "volumes" not in pod and "volumeMounts" not in container
        return
    assert pod["volumes"] == [
        {"name": "key-cache", "hostPath": {"path": "/var/cache/fhe-keys", "type": "Directory"}}
    ]
    assert container["volumeMounts"] == [{"name": "key-cache", "mountPath": "/var/cache/fhe-keys"}]
    assert {"name": "FHE_KEY_CACHE_DIR", "value": "/var/cache/fhe-keys"} in container["env"]
    assert "volumes" not in stage_pod(stage, JobSettings())


# --- one pod for consecutive stages (FHE_JOB_FUSE_STAGES) ---------------------------

FUSED = ("compute", "sns", "send")


def fused_views(view: JobView) -> dict[str, JobView]:
    from fhe_operator.reconcile import stage_views

    return stage_views(view, FUSED)


def test_fusing_starts_all_stages_in_one_job_unless_compute_is_spread_over_pods():
    fused = plan(observed(spec=THREE_STAGES, fuse=True))
    assert fused.create_jobs == [FUSED]
    assert ("Normal", "JobCreated", "created Job for stages compute, sns, send") in fused.events
    assert plan(observed(spec=THREE_STAGES)).create_jobs == [("compute",)]  # not fusing
    spread = spec(stages=list(FUSED), parallelism=2)
    assert plan(observed(spec=spread, fuse=True)).create_jobs == [("compute",)]
    after = plan(observed(spec=spread, fuse=True, jobs={"compute": DONE}))
    assert after.create_jobs == [("sns", "send")]


def test_a_fused_job_running_shows_compute_then_squashing_as_the_database_counts():
    running = fused_views(JobView("b-compute-sns-send", active=1))
    computing = plan(observed(spec=THREE_STAGES, fuse=True, jobs=running))
    assert (computing.phase, computing.create_jobs) == ("Computing", [])
    assert computing.status["stages"]["compute"]["state"] == "Running"
    squashing = plan(
        observed(spec=THREE_STAGES, fuse=True, jobs=running, progress=Progress(3, 3, 0))
    )
    assert (squashing.phase, squashing.create_jobs) == ("Squashing", [])
    states = {s: e["state"] for s, e in squashing.status["stages"].items()}
    assert states == {"compute": "Succeeded", "sns": "Running", "send": "Running"}
    assert squashing.status["stages"]["sns"]["job"] == "b-compute-sns-send"
    # A failed computation stops the pod after compute: it never looks done.
    failing = plan(observed(spec=THREE_STAGES, jobs=running, progress=Progress(3, 2, 1)))
    assert failing.phase == "Computing"


def test_a_fused_job_that_succeeded_gives_each_stage_its_own_summary():
    message = {
        "stage": "send",
        "exit_code": 0,
        "stages": {
            "compute": {"total": 3, "completed": 3, "failed": 0},
            "sns": {"total": 1, "completed": 1, "uploaded": 2, "failed": 0},
            "send": {"total": 3, "completed": 3, "sent": 3, "transactions": 2, "failed": 0},
        },
    }
    views = fused_views(JobView("b-css", succeeded=True, summary=message))
    result = plan(observed(spec=THREE_STAGES, jobs=views, progress=Progress(3, 3, 0)))
    assert result.phase == "Succeeded"
    assert (
        "1/1 outputs published; 3/3 sent to the gateway in 2 transaction(s)"
        in (result.status["message"])
    )
    assert result.status["stages"]["sns"]["summary"]["uploaded"] == 2
    assert {e["state"] for e in result.status["stages"].values()} == {"Succeeded"}


@pytest.mark.parametrize(
    ("message", "failed_stage", "error"),
    [
        (
            {
                "stage": "sns",
                "exit_code": 3,
                "error": "1 handle(s) failed; 0xab: bad bytes",
                "stages": {
                    "compute": {"total": 3, "completed": 3, "failed": 0},
                    "sns": {"total": 1, "completed": 0, "failed": 1},
                },
            },
            "sns",
            "1 handle(s) failed; 0xab: bad bytes",
        ),
        # The log's last line (FallbackToLogsOnError): no stage named, so the first.
        ({"error": "Killed"}, "compute", "Killed"),
    ],
)
def test_a_fused_job_that_failed_fails_the_stage_it_ended_in(message, failed_stage, error):
    views = fused_views(
        JobView("b-css", failed=True, failure_message="PodFailurePolicy", summary=message)
    )
    result = plan(observed(spec=THREE_STAGES, jobs=views, progress=Progress(3, 3, 0)))
    assert result.phase == "Failed"
    assert result.status["message"] == f"stage {failed_stage} failed: {error}"
    states = {s: e["state"] for s, e in result.status["stages"].items()}
    at = FUSED.index(failed_stage)
    expected = {
        s: ("Succeeded", "Failed", "Pending")[1 + (i > at) - (i < at)] for i, s in enumerate(FUSED)
    }
    assert states == expected


def test_a_fused_job_manifest_has_what_each_of_its_stages_needs():
    settings = JobSettings(secret="creds", send_secret="keys", key_cache_host_path="/k")
    manifest = job_manifest(
        namespace="fhe",
        name="b",
        uid="u1",
        batch_id="fhe/b@1",
        spec=spec(stages=list(FUSED), resources={"gpus": 1}),
        stages=FUSED,
        device="gpu",
        settings=settings,
        remaining_seconds=100,
    )
    labels = manifest["metadata"]["labels"]
    assert labels["fhe.coprocessor.dev/stage"] == "compute"  # what capacity counts
    assert labels["fhe.coprocessor.dev/stages"] == "compute.sns.send"
    assert manifest["metadata"]["name"].endswith("-compute-sns-send")
    assert manifest["spec"]["completions"] == 1
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["fhe-job", "compute,sns,send", "--batch", "fhe/b@1"]
    secrets = [ref["secretRef"]["name"] for ref in container["envFrom"] if "secretRef" in ref]
    assert secrets == ["creds", "keys"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "FHE_KEY_CACHE_DIR", "value": "/k"} in container["env"]
    assert {"name": "FHE_COMPUTE_DEVICE", "value": "gpu"} in container["env"]


@pytest.mark.parametrize(
    ("label", "stage", "group"),
    [
        ("compute.sns.send", "compute", FUSED),
        ("sns.send", "sns", ("sns", "send")),
        (None, "sns", ("sns",)),
        ("send.compute", "send", ("send",)),  # out of order: not a group we create
        ("sns.send", "compute", ("compute",)),  # does not begin with its stage label
        ("compute..sns", "compute", ("compute",)),
        ("verify", "verify", ("verify",)),
    ],
)
def test_a_jobs_stages_come_from_its_labels_only_when_they_make_sense(label, stage, group):
    from coprocessor.api.stages import group_of_label

    assert group_of_label(label, stage) == group


def test_a_spec_edited_down_to_compute_is_not_done_while_its_fused_pod_runs():
    """The stages are not in the batch id: a batch edited from [compute, sns] to
    [compute] keeps its Job; all computed, it is Succeeded only when that Job ends."""
    running = fused_views(JobView("b-compute-sns-send", active=1))
    result = plan(observed(jobs=running, progress=Progress(3, 3, 0)))
    assert result.phase == "Computing"
