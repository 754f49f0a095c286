"""Where tests find things in the source checkout (the product itself never looks there)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTING_CONTRACTS = REPO_ROOT / "contracts" / "build" / "testing"
