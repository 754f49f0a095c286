"""Code that runs inside the FheBatch Jobs' pods: ``fhe-job compute|sns|send|verify``."""

STAGES = ("compute", "sns", "send", "verify")
# Stages whose runner exists. The operator rejects a batch asking for any other, so a
# missing stage is a clear validation error, never a Job that fails at run time.
AVAILABLE = ("compute", "sns", "send")
