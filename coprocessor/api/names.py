"""Labels, annotations and finalizers on Kubernetes objects, shared by every deployable.

The operator finds its Jobs by these labels, the host listener marks the batches it
creates with them and fhectl and the demo select by them; defining them once keeps a
rename from silently splitting the producers from the readers.
"""

from __future__ import annotations

GROUP = "fhe.coprocessor.dev"

# On stage Jobs (and their pods), set by the operator.
LABEL_BATCH = f"{GROUP}/batch"
LABEL_STAGE = f"{GROUP}/stage"  # the (first) stage a Job runs
LABEL_STAGES = f"{GROUP}/stages"  # all of them, on a Job that runs several (a.b.c)
LABEL_TENANT = f"{GROUP}/tenant"
LABEL_DEVICE = f"{GROUP}/device"
ANNOTATION_BATCH_ID = f"{GROUP}/batch-id"

# On FheBatches the host listener creates.
LABEL_SOURCE = f"{GROUP}/source"
SOURCE_HOST_LISTENER = "host-listener"
ANNOTATION_BLOCK = f"{GROUP}/block"

# The operator's finalizer (releases the batch in the database) and kopf's own.
FINALIZER_RELEASE = f"{GROUP}/release"
FINALIZER_KOPF = f"{GROUP}/finalizer"

# On nodes: which device class a node offers (the dev node agent sets it).
NODE_LABEL_DEVICE = f"{GROUP}/device"
