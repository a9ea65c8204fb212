"""Point tracking on video windows (AMPLIFY conventions): sources, trackers, exact oracle, TAP-Vid metrics.

* ``conventions``: AMPLIFY's query grid, normalisation and velocities; window screening (NaN, static).
* ``metrics``: TAP-Vid metrics, exactly as tapnet's ``compute_tapvid_metrics``.
* ``sources``: clips (nuScenes CAM_FRONT sweeps, video files, image folders), resampling, windows.
* ``trackers``: the ``lk`` and ``cotracker`` backends.
* ``oracle``: exact tracks of any query points in the synthetic world.
* ``pipeline``: the ``tracks`` stage's work (per-clip jobs, outputs, metrics).
"""
