"""Code that runs inside the coprocessor's Jobs' pods: ``fhe-job compute|sns|send|verify``."""
