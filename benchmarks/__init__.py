"""Throughput and memory benchmarks: how fast is the mesh on this machine, next to raw pyzmq?

Run ``python -m benchmarks [--quick] [--out DIR]``. Every case runs once through autonomy and
once through the same workload written directly on loop-driven pyzmq sockets (the floor of
our stack), alternating between the two for several rounds so that machine noise hits both
alike. The result is a JSON file (machine, versions, parameters, every sample, medians and the
ratio ours/raw) and a PNG plot; the last line on stdout is a one-line JSON summary of ratios.

Modules: ``_common`` (timing, processes, machine facts), ``_rawzmq`` (the raw pyzmq client and
server), ``_runner`` (the process on the far side of the remote cases), ``_cases`` (the
workloads, ours and raw), ``_memory`` (resident memory), ``_report`` (JSON and plot),
``_profile`` (one side of one case, for a profiler).

``python -m benchmarks zone`` asks another question, how a zone's cost grows with its size:
``_zone`` starts zones of N nodes with the zone launcher and measures them, ``_zone_report``
writes the table and the plot.
"""
