"""cvae-pipeline: train and honestly measure class-conditional VAEs on CIFAR-10."""

__version__ = "0.1.0"
