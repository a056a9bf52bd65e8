"""Directory names under an artifacts root, for the code that writes them and the code that reads
them (the pipeline writes, report pages read: both import the names from here).

Runs are ``<root>/<run_id>/``; the other kinds have their own sub-directory.
"""

TARGETS_DIR = "targets"  # <root>/targets/tgt_<hash>/: stored targets (llc.store.targets)
CAL_DIR = "calibrations"  # <root>/calibrations/cal_<hash>/: llc calibrate
TRAJ_DIR = "trajectories"  # <root>/trajectories/<id>/: llc trajectory
