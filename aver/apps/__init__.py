"""Applications that join both stages (above the kernel, which imports neither): ``prediction``, ``qa``."""
