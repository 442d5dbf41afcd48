"""cryoem: learning to recover orientations from projections in single-particle cryo-EM.

One module per concern:

* :mod:`cryoem.rotations` — quaternions, RELION Euler angles, distances, uniform sampling, point groups
* :mod:`cryoem.sampling` — non-uniform distributions of orientations (Euler ranges, preferred views)
* :mod:`cryoem.volumes` — density maps from MRC files, atomic models, built-in proteins, phantoms
* :mod:`cryoem.projection` — the Fourier-slice projector, shifts, CTF and noise
* :mod:`cryoem.datasets` — HDF5 datasets of projections with their ground truth
* :mod:`cryoem.plots` — figures
* :mod:`cryoem.cli` — the ``cryoem`` command line

Importing the package has no side effects and does not import TensorFlow.
"""

__version__ = "0.1.0"
