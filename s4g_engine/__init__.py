"""s4g_engine: the torch-free inference engine of s4g (numpy, onnxruntime, faiss, the compiled core)."""
