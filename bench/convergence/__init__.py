"""How fast each initialisation of the pseudo-words converges, on concepts the model never saw.

    python -m bench.convergence                       # the mini world: held-out concepts, all modes
    python -m bench.convergence --model ./sd15 --images a.png b.png --captions "..." "..."

See `__main__` for the options and `docs/convergence.md` for what is measured and why.
"""
