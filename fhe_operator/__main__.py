"""``fhe-operator``: the kopf operator that reconciles FheBatch resources into Jobs.

One active replica: kopf's peering needs its own CRD, so until the chart ships it the
Deployment runs one replica; Job creation is idempotent anyway (deterministic names).
"""

from __future__ import annotations

import argparse
import os
import sys

from coprocessor.errors import exit_code_for
from coprocessor.logs import configure_logging
from coprocessor.settings import load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fhe-operator", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all",
    )
    parser.add_argument(
        "--liveness",
        default="http://127.0.0.1:8080/healthz",
        help="liveness endpoint URL (reflects the watch streams)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except Exception as error:
        print(f"fhe-operator: error: {error}", file=sys.stderr)
        sys.exit(exit_code_for(error))
    configure_logging(settings.log_level, settings.log_format)
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = str(settings.kubeconfig)  # kopf's own login reads it
    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=False)
    configure_logging(settings.log_level, settings.log_format)  # kopf replaced handlers
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )


if __name__ == "__main__":
    main()
