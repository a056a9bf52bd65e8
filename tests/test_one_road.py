"""The one road from sampler configs to draws (llc.pipeline.sampling): nothing else walks it."""

import ast
import re
from pathlib import Path

import jax
import numpy as np

import llc
from llc import config as C
from llc.engine import autostep
from llc.engine.posterior import make_posterior
from llc.pipeline import sampling

PKG = Path(llc.__file__).resolve().parent


def _calls(tree: ast.AST, name: str) -> list[int]:
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "attr", None) == name or getattr(n.func, "id", None) == name)]


def test_only_the_road_runs_batches_and_imports_sampler_modules():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        tree = ast.parse(path.read_text())
        if rel not in ("engine/driver.py", "pipeline/sampling.py"):
            assert not _calls(tree, "run_batch"), f"{rel} calls run_batch: sample through llc.pipeline.sampling"
        if rel not in ("engine/samplers/__init__.py", "registry.py"):
            found = re.findall(r"(?:registry\.sampler\([^)]*\)|SAMPLERS\[[^]]*\])\.module", path.read_text())
            assert not found, f"{rel} imports a sampler module itself ({found}): use llc.engine.samplers.load"


def test_no_module_imports_another_modules_private_names():
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llc"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(PKG)} imports {private} from {node.module}"


def _quadratic_post(gamma: float = 100.0):
    def loss(w, x, y):
        del y
        return 0.5 * jax.numpy.sum(w["w"] ** 2) + 0.0 * jax.numpy.mean(x)

    x = np.zeros((64, 1), np.float32)
    return make_posterior(loss, {"w": np.zeros(3, np.float32)}, x, x, C.PosteriorConfig(gamma=gamma))


def test_plan_groups_by_program_and_keeps_job_order():
    small = C.SGLDConfig(chains=2, draws=20, burnin=0, eval_every=1, batch_size=16, step_size=1e-4)
    other_step = C.SGLDConfig(chains=2, draws=20, burnin=0, eval_every=1, batch_size=16, step_size=2e-4)
    other_shape = C.SGLDConfig(chains=2, draws=30, burnin=0, eval_every=1, batch_size=16, step_size=1e-4)
    jobs = [sampling.Job("sgld", cfg, sampling.sampler_key(seed, "sgld"))
            for seed, cfg in enumerate((small, other_shape, other_step))]
    jobs.append(sampling.Job("vi", C.VIConfig(steps=20, eval_every=10, batch_size=16), sampling.sampler_key(0, "vi")))
    batches = sampling.plan(jobs)
    assert [(b.sampler, b.members) for b in batches] == [("sgld", (0, 2)), ("sgld", (1,)), ("vi", (3,))]
    assert batches[2].algorithms is None  # VI runs its own loop
    assert [len(b.members) for b in sampling.plan(jobs[:3], cap=lambda group: 1)] == [1, 1, 1]
    # step_size=auto: the job once per point of its grid, in the same program as the numeric steps
    auto = sampling.Job("sgld", C.SGLDConfig(chains=2, draws=20, burnin=0, eval_every=1, batch_size=16),
                        sampling.sampler_key(5, "sgld"))
    [batch, _] = sampling.plan([jobs[0], auto, jobs[1]])
    points = len(autostep.FACTORS)
    assert batch.members == (0, *[1] * points) and batch.grid == (None, *range(points))


def test_sample_one_is_the_road_with_one_job():
    sampling.enable_x64()
    post = _quadratic_post()
    cfg = C.SGLDConfig(chains=2, draws=50, burnin=10, eval_every=2, batch_size=16, step_size=1e-3)
    key = sampling.sampler_key(0, "sgld")
    alone = sampling.sample_one("sgld", post, cfg, key)
    jobs = [sampling.Job("sgld", cfg, key), sampling.Job("sgld", cfg, sampling.sampler_key(1, "sgld"))]
    both = sampling.sample(sampling.plan(jobs), jobs, [post, post])
    np.testing.assert_allclose(both[0].Ln, alone.Ln, rtol=1e-6)
    assert not np.allclose(both[1].Ln, alone.Ln)  # its own stream
    metrics = sampling.evaluate(alone, post)
    assert metrics["llc_mean"] is not None and isinstance(metrics["flags"], list)
