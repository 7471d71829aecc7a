"""The ``refine`` stage: an adversarial fine-tune of the trained decoder, the encoder frozen.

``adversarial`` holds the algorithm, ``pipeline`` the stage's work, ``artifact`` the check that ``sample``
and ``evaluate`` decode with a refinement of the model the prior was fitted on. Nothing is imported
here, so those two stages depend on ``artifact`` alone, not on the training code."""
