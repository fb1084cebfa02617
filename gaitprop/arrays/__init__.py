"""The array backend, at the bottom: NumPy or CuPy (`backend`), cuBLAS called directly (`cublas`)
and the products and CUDA graphs built on both (`products`)."""
