import os

# Tests must not write into the user's ./artifacts, and must see a stable code version unless they
# test the fingerprint itself.
os.environ.setdefault("LLC_ARTIFACTS", os.path.join(os.path.dirname(__file__), "..", "artifacts", "_pytest"))
