"""PyTorch models through llc.bridges.torch: the translated forward pass and gradient equal torch's,
lambda-hat equals that of the same network in Flax, a tiny GPT runs through estimate and trajectory,
and an operator outside the table is refused in one line before sampling.

torch is an optional extra: without it these tests skip, except with LLC_REQUIRE_TORCH=1 (CI, .ci/run),
where the import error fails the run instead.
"""

import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:
    import torch
    from torch import nn
except ImportError:
    if os.environ.get("LLC_REQUIRE_TORCH") == "1":
        raise  # CI installs the torch extra: a missing torch must fail, not skip
    pytest.skip("torch is not installed (pip install -e '.[torch]')", allow_module_level=True)

import llc
from llc.api import NotAMinimumWarning
from llc.bridges import torch as bridge
from llc.config import ConfigError
from llc.pipeline.sampling import enable_x64

enable_x64()
torch.set_num_threads(1)  # the CI machine has 2 cores; torch's own pool would fight JAX's


class Block(nn.Module):
    """A GPT-2 block: pre-LayerNorm causal self-attention and a GELU MLP, dropout (off in eval)."""

    def __init__(self, d: int, heads: int, T: int):
        super().__init__()
        self.ln1, self.ln2, self.heads = nn.LayerNorm(d), nn.LayerNorm(d), heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(0.1))
        self.register_buffer("causal", torch.tril(torch.ones(T, T, dtype=torch.bool)))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)
        att = att.masked_fill(~self.causal[:T, :T], float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 7, d: int = 8, heads: int = 2, T: int = 6, layers: int = 1):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(T, d)
        self.blocks = nn.ModuleList([Block(d, heads, T) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class Encoder(nn.Module):
    """nn.TransformerEncoderLayer stack with a causal float mask (attention mask path)."""

    def __init__(self, T: int = 5):
        super().__init__()
        self.inp, self.out = nn.Linear(3, 8), nn.Linear(8, 2)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(T))

    def forward(self, x):
        # is_causal=True: left None, torch compares the mask's values to a causal one, a data-dependent
        # branch torch.export cannot trace
        return self.out(self.enc(self.inp(x), mask=self.mask, is_causal=True))


class Zoo(nn.Module):
    """The rest of the table in one module: Conv1d/Conv2d, BatchNorm (eval), padding, SiLU, ELU,
    LeakyReLU, Softplus, sigmoid, advanced indexing, variance, cat/stack, clamp, log_softmax."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv1d = nn.Conv1d(3, 4, 2, dilation=2)
        self.lin = nn.Linear(4, 5)
        self.register_buffer("pick", torch.tensor([0, 2, 4]))

    def forward(self, x):
        h = nn.functional.silu(self.bn(self.conv(x)))  # (B, 3, 4, 4)
        h = nn.functional.pad(h, (1, 0, 0, 1)).mean(dim=2)  # (B, 3, 5)
        h = self.lin(self.conv1d(h).transpose(1, 2))  # (B, 3, 5)
        h = nn.functional.leaky_relu(h, 0.1) + nn.functional.elu(h) + nn.functional.softplus(h) + torch.sigmoid(h)
        h = h[:, :, self.pick] * h.var(dim=-1, keepdim=True)  # (B, 3, 3)
        h = torch.cat([h, torch.stack([h.amax(-1), h.abs().sum(-1).sqrt()], -1)], -1)  # (B, 3, 5)
        h = torch.clamp(h, -3, 3) ** 2 - torch.exp(-h) / 2
        return nn.functional.log_softmax(h.flatten(1), -1)


class Attention(nn.Module):
    """F.scaled_dot_product_attention (causal) and a Conv3d."""

    def __init__(self):
        super().__init__()
        self.qkv, self.conv = nn.Linear(8, 24), nn.Conv3d(1, 2, 2)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, 2, 4).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, 2, T, 4)
        return self.conv(y.reshape(B, 1, 2, T, 4)).flatten(1)


def mlp():
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.GELU(),
                         nn.Linear(8, 2))


def cases():
    torch.manual_seed(0)
    return {
        "mlp": (mlp(), torch.randn(6, 3), torch.randn(6, 2), "mse"),
        "gpt": (TinyGPT(layers=2), torch.randint(0, 7, (6, 6)), torch.randint(0, 7, (6, 6)), "cross_entropy"),
        "encoder": (Encoder(), torch.randn(6, 5, 3), torch.randn(6, 5, 2), "mse"),
        "zoo": (zoo(), torch.randn(6, 2, 4, 4), torch.randn(6, 15), "mse"),
        "attention": (Attention(), torch.randn(6, 5, 8), torch.randn(6, 24), "mse"),
    }


def zoo():
    module = Zoo()
    for _ in range(3):  # BatchNorm's running statistics away from (0, 1): the buffers must be read
        module(torch.randn(8, 2, 4, 4))
    return module


def torch_loss(name, out, y):
    if name == "mse":
        return 0.5 * ((y - out) ** 2).sum(-1).mean()
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@pytest.mark.parametrize("case", ["mlp", "gpt", "encoder", "zoo", "attention"])
def test_forward_and_gradient_equal_torch(case):
    """float32 both sides: the translation is exact up to summation order (a few ulps of the output)."""
    module, x, y, loss = cases()[case]
    module.eval()
    fn, params, xs, ys = bridge.adapt(module, None, x, y, loss)
    assert list(params) == [name for name, _ in module.named_parameters()]
    prog = fn.program
    for rows in (6, 3):  # the full batch and a minibatch: the batch axis is dynamic in the export
        want = module(x[:rows]).detach().numpy()
        got = np.asarray(jax.jit(prog)(params, jnp.asarray(xs[:rows])))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    module.zero_grad()
    torch_loss(loss, module(x), y).backward()
    value, grads = jax.jit(jax.value_and_grad(fn))(params, (jnp.asarray(xs), jnp.asarray(ys)))
    with torch.no_grad():
        assert float(value) == pytest.approx(float(torch_loss(loss, module(x), y)), rel=1e-5)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(np.asarray(grads[name]), p.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_translation_runs_at_the_parameters_float64():
    """HMC samples in float64: torch's float32 ops compute at the parameters' dtype, not back in float32."""
    module, x, y, loss = cases()["gpt"]
    module.eval()
    fn, params, xs, ys = bridge.adapt(module, None, x, y, loss)
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    out = fn.program(p64, jnp.asarray(xs))
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), module(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def _trained_pair():
    """A 2 -> 4 -> 1 tanh network trained to its minimum (LBFGS), in torch and in Flax with the same weights."""
    import flax.linen as fnn

    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 2)).astype(np.float32)
    y = (np.tanh(x[:, :1] - 0.5 * x[:, 1:]) + 0.1 * rng.standard_normal((400, 1))).astype(np.float32)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    X, Y = torch.from_numpy(x).double(), torch.from_numpy(y).double()
    opt = torch.optim.LBFGS(net.parameters(), max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = 0.5 * ((Y - net(X)) ** 2).sum(-1).mean()
        loss.backward()
        return loss

    opt.step(closure)
    net = net.float()

    class Net(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dense(1)(fnn.tanh(fnn.Dense(4)(x)))

    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    # Dense(1) is constructed first, so it is Dense_0: the output layer
    flax_params = {"params": {"Dense_1": {"kernel": sd["0.weight"].T, "bias": sd["0.bias"]},
                              "Dense_0": {"kernel": sd["2.weight"].T, "bias": sd["2.bias"]}}}
    return net, Net(), flax_params, x, y


@pytest.mark.parametrize("sampler, config", [
    ("sgld", {"chains": 4, "draws": 400, "step_size": 1e-4}),
    ("hmc", {"chains": 4, "draws": 150}),
])
def test_torch_and_flax_give_the_same_llc(sampler, config):
    """The same trained network as a torch module and as a Flax module: lambda-hat agrees within 3
    combined standard errors (independent seeds, so the two Monte Carlo errors add)."""
    net, flax_net, flax_params, x, y = _trained_pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotAMinimumWarning)  # w* is a minimum: no gradient bias either side
        ours = llc.estimate(net, None, torch.from_numpy(x), torch.from_numpy(y), sampler=sampler,
                            sampler_config=config, seed=0)
        ref = llc.estimate(flax_net, flax_params, x, y, sampler=sampler, sampler_config=config, seed=1)
    assert ours.L0 == pytest.approx(ref.L0, rel=1e-5)
    se = math.hypot(ours.llc_se, ref.llc_se)
    assert abs(ours.llc_mean - ref.llc_mean) < 3 * se, (ours.llc_mean, ref.llc_mean, se)
    assert 0 < ours.llc_mean < 17 / 2  # d = 17


def _gpt_checkpoints():
    """A tiny GPT trained on next-token prediction of a repeating pattern; 5 state_dicts along the way."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, 7, (64, 1), generator=g)
    seq = (start + torch.arange(7)[None, :]) % 7  # token t+1 = token t + 1 (mod 7)
    x, y = seq[:, :-1], seq[:, 1:]
    model = TinyGPT()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    states = []
    for step in range(50):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).reshape(-1, 7), y.reshape(-1)).backward()
        opt.step()
        if step % 10 == 9:
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    return model, states, x, y


def test_tiny_gpt_estimate_and_trajectory(tmp_path):
    model, states, x, y = _gpt_checkpoints()
    config = {"chains": 2, "draws": 60, "burnin": 10, "eval_every": 5, "step_size": 1e-4, "batch_size": 32}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotAMinimumWarning)  # 50 Adam steps: near, not at, a minimum
        est = llc.estimate(model, None, x, y, loss="cross_entropy", sampler_config=config)
    d = sum(p.numel() for p in model.parameters())
    assert est.llc_mean is not None and 0 < est.llc_mean < d / 2
    traj = llc.trajectory(model, states, (x, y), steps=[10, 20, 30, 40, 50], loss="cross_entropy",
                          sampler_config=config, out=tmp_path / "traj")
    assert traj.steps == [10, 20, 30, 40, 50]
    assert all(m is not None and np.isfinite(m) for m in traj.llc_mean)
    # L0 is the cross-entropy of each checkpoint on the data, as torch computes it (eval mode)
    model.eval()
    want = [float(nn.functional.cross_entropy(torch.func.functional_call(model, s, (x,)).reshape(-1, 7),
                                              y.reshape(-1))) for s in states]
    np.testing.assert_allclose(traj.table["train_loss"], want, rtol=1e-4)


class Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return torch.cumsum(self.lin(x), dim=-1)


def test_an_operator_outside_the_table_is_one_line_before_sampling(monkeypatch):
    from llc.pipeline import sampling

    monkeypatch.setattr(sampling, "sample_one", lambda *a, **k: pytest.fail("sampled an untranslatable model"))
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    with pytest.raises(ConfigError) as info:
        llc.estimate(Cumulative(), None, x, y)
    msg = str(info.value)
    assert "\n" not in msg
    assert "aten.cumsum.default" in msg and "(in lin" not in msg and "llc.bridges.torch.SUPPORTED" in msg


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x) if x.sum() > 0 else -self.lin(x)  # a branch on values: not exportable


def test_a_module_torch_export_cannot_trace_is_one_line():
    with pytest.raises(ConfigError, match="model: torch.export could not export Branchy") as info:
        llc.estimate(Branchy(), None, torch.randn(8, 3), torch.randn(8, 2))
    assert "\n" not in str(info.value)


def test_loss_options_and_bad_inputs():
    module, x, y, _ = cases()["mlp"]
    # a user's JAX loss of (output, y): here the default MSE, written out
    fn, params, xs, ys = bridge.adapt(module, None, x, y, lambda out, t: 0.5 * jnp.mean(jnp.sum((t - out) ** 2, -1)))
    fn_mse, *_ = bridge.adapt(module, None, x, y, None)
    assert float(fn(params, (xs, ys))) == pytest.approx(float(fn_mse(params, (xs, ys))), rel=1e-6)
    assert fn_mse == bridge.adapt(module, None, x, y, "mse")[0]  # one program per module: compiled once
    with pytest.raises(ConfigError, match="loss: 'hinge' is not allowed"):
        llc.estimate(module, None, x, y, loss="hinge")
    with pytest.raises(ConfigError, match=r"y: shape \(6,\) does not match the model output shape"):
        llc.estimate(module, None, x, y[:, 0], loss="mse")
    with pytest.raises(ConfigError, match="y: cross_entropy takes integer"):
        llc.estimate(module, None, x, y, loss="cross_entropy")
    with pytest.raises(ConfigError, match="params: no parameter '6.bias'"):
        llc.estimate(module, {k: v for k, v in module.state_dict().items() if k != "6.bias"}, x, y)
    with pytest.raises(ConfigError, match="loss: only for a PyTorch module"):
        llc.estimate(lambda p, b: jnp.sum(p ** 2), np.zeros(3), np.zeros((4, 1)), np.zeros((4, 1)), loss="mse")
