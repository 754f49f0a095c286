"""Code that runs inside the FheBatch Jobs' pods: ``fhe-job compute|sns|send|verify``."""
