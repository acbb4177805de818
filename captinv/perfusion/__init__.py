"""Perfusion: key-locked rank-one editing of the cross-attention K and V projections.

Tewel, Gal, Chechik, Atzmon, SIGGRAPH 2023 (arXiv 2305.01644). This package is
the method layer only: the gated rank-1 math (`rank1`), the concept file
(`concept`), finding and wrapping the UNet's cross-attention projections
(`layers`, `editing`, `trainable`) and the text-encoding covariance
(`covariance`). It imports no WebUI module and no backend; the trainer and the
WebUI glue call into it. docs: /work/shared/reference/perfusion.md.
"""
