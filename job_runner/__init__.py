"""Code that runs inside the coprocessor's Jobs' pods: ``fhe-job compute|sns|send|verify``."""

STAGES = ("compute", "sns", "send", "verify")
# The stages an FheBatch may list. verify is not one: it drains the verify_proofs queue
# (input lists waiting for their proof), whoever queued them, and takes no batch.
AVAILABLE = ("compute", "sns", "send")
