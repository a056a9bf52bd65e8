"""Thresholds of the calibration rule (``llc.pipeline.calibrate``'s module docstring argues them),
shared by the rule and the report pages that draw and explain it (no JAX).
"""

# healthy: R-hat below this. Stricter than the unconverged flag's llc.analysis.flags.UNCONVERGED_RHAT
# (1.05): a flag must be rare on correct runs of few effective draws, where R-hat's own noise exceeds
# 0.01; the rule only passes over such a point for a better-mixed one.
RHAT_MAX = 1.01
MALA_MIN = 0.9  # healthy SGLD: mean MALA acceptance at least this
AGREE_SE = 2.0  # a point joins the plateau while its lambda-hat agrees within this many combined SE
BACKOFF = 3.0  # the recommended step is at most the plateau's top / BACKOFF (see the module docstring)
