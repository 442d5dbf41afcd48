"""The ``cryoem`` subcommands, grouped by concern; :mod:`cryoem.cli` assembles them.

Each subcommand is a pair ``add_<name>_args(parser)`` / ``run_<name>(args)``:

* :mod:`cryoem.commands.data` — volumes, generate, import-relion, export-relion, score
* :mod:`cryoem.commands.method` — train, distances, recover
* :mod:`cryoem.commands.maps` — refine, reconstruct
"""
