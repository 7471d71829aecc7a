"""The latent prior ``sample`` draws from: fitted after training on the encoded training set
(the ``prior`` stage), saved as ``models/prior.pt``, shipped with the served generator."""

from .artifact import DiffusionPrior, DiffusionSampler, GMMPrior, load_prior, save_prior
from .gmm import ClassGMM

__all__ = ["ClassGMM", "DiffusionPrior", "DiffusionSampler", "GMMPrior", "load_prior", "save_prior"]
