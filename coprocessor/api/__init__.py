"""The product's Kubernetes API: the FheBatch resource model, its CRD, the labels and
annotations on our objects, the batch stages and one API-client helper."""
