"""Long-running Deployments: the host-chain listener, the gateway listener, the sender."""
