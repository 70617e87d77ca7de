"""Throughput and memory benchmarks: how fast is the mesh on this machine, next to raw pyzmq?

Run ``python -m benchmarks [--quick] [--out DIR] [--builds pure,compiled]``. Every case runs
once through autonomy and once through the same workload written directly on loop-driven
pyzmq sockets (the floor of our stack), and two of them through Pyro5 too, alternating
between them for several rounds so that machine noise hits all alike; the whole case list
runs once per build of autonomy (pure Python, compiled with mypyc). The result is a JSON file
(machine, versions, parameters, per build every sample, medians and the ratios ours/raw and
ours/pyro, and the targets) and a PNG plot; the last line on stdout is a one-line JSON summary
of ratios by build.

Modules: ``_common`` (timing, processes, machine facts), ``_rawzmq`` (the raw pyzmq client and
server), ``_pyro`` (the Pyro5 server object and clients), ``_runner`` (the process on the far
side of the remote cases), ``_cases`` (the workloads, ours, raw and pyro), ``_memory``
(resident memory), ``_builds`` (a copy of the package and a child process per build, and their
merge), ``_report`` (ratios, targets, JSON and table), ``_plot`` (the PNG), ``_profile`` (one
side of one case, for a profiler).

``python -m benchmarks zone`` asks another question, how a zone's cost grows with its size:
``_zone`` starts zones of N nodes with the zone launcher and measures them, ``_zone_report``
writes the table and the plot.
"""
