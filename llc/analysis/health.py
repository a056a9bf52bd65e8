"""Thresholds of the calibration rule (``llc.pipeline.calibrate``'s module docstring argues them),
shared by the rule and the report pages that draw and explain it (no JAX).
"""

RHAT_MAX = 1.01  # healthy: R-hat below this
MALA_MIN = 0.9  # healthy SGLD: mean MALA acceptance at least this
AGREE_SE = 2.0  # a point joins the plateau while its lambda-hat agrees within this many combined SE
BACKOFF = 3.0  # the recommended step is at most the plateau's top / BACKOFF (see the module docstring)
