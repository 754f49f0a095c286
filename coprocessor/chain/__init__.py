"""The product's contracts and chain access (web3)."""
