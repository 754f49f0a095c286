"""The kopf operator: reconciles FheBatch resources into stage Jobs (``fhe-operator``)."""
