"""Benchmarks anyone can run: encoder speed, MFU against this machine's measured GEMM peak, bf16 quality, store I/O."""
