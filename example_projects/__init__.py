"""Small runnable projects that show lightning-viz at work (see ``configs/``).

- :mod:`example_projects.digits`: a small CNN on scikit-learn's bundled 8x8 handwritten digits (offline).
- :mod:`example_projects.mnist`: the same model on MNIST, downloaded by torchvision (online).
"""
