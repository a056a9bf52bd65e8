import os

# Tests must not write into the user's ./artifacts, and must see a stable code version unless they
# test the fingerprint itself.
os.environ.setdefault("LLC_ARTIFACTS", os.path.join(os.path.dirname(__file__), "..", "artifacts", "_pytest"))

# One CPU device in this process and the CLI processes it starts, whatever the cores
# (llc.engine.devices.spread_host_cores would use them all): results do not depend on the host, and
# tests/test_devices.py tests the spread.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1".strip()

# Many tests compile the same sampler programs from fresh closures; the persistent XLA cache
# (keyed by the compiled program) lets later tests reuse them within one session.
from llc.pipeline.sampling import enable_compilation_cache  # noqa: E402

enable_compilation_cache()


def tanh_net():
    """A user's own model for the Python-API tests: a 2 -> 4 -> 1 tanh network (flax.linen)."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.tanh(nn.Dense(4)(x)))

    return Net()
