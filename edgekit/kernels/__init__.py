"""Kernels for packed weights: ``ops`` (torch.library definitions of ``edgekit::linear_w2`` /
``linear_w4``), ``cpu`` (C++ scalar/AVX2/NEON kernels, ctypes bindings, ExecuTorch custom ops),
``cuda``. The packed layout itself is defined once in :mod:`edgekit.quant.layout`."""
