"""The stages a coprocessor runs, and which of them an FheBatch may list.

``fhe-job`` runs each of them in a pod; the operator validates a batch's stages against
``BATCH_STAGES``. ``verify`` is a stage of ``fhe-job`` but not of a batch: it drains the
verify_proofs queue (input lists waiting for their proof), whoever queued them.
"""

from __future__ import annotations

BATCH_STAGES = ("compute", "sns", "send")
JOB_STAGES = (*BATCH_STAGES, "verify")
