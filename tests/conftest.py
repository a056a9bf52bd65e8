import os

# Tests must not write into the user's ./artifacts, and must see a stable code version unless they
# test the fingerprint itself.
os.environ.setdefault("LLC_ARTIFACTS", os.path.join(os.path.dirname(__file__), "..", "artifacts", "_pytest"))

# Many tests compile the same sampler programs from fresh closures; the persistent XLA cache
# (keyed by the compiled program) lets later tests reuse them within one session.
from llc.pipeline.experiment import enable_compilation_cache  # noqa: E402

enable_compilation_cache()
