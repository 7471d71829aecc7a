"""Stage ``refine``: fine-tune the trained model's decoder against a PatchGAN discriminator (VQGAN's
hinge loss and adaptive weight), the encoder frozen so the prior fitted on its latents stays valid;
``sample`` and ``evaluate`` decode with the result, ``models/refined.pt``. ``refine.steps: 0`` is off
(the trained model, byte for byte). An interrupted run of the same inputs resumes from its checkpoint."""

from __future__ import annotations

from cvae_pipeline.config import load_params
from cvae_pipeline.refinement.pipeline import refine
from cvae_pipeline.stage import run_stage, stage_parser


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    metrics = refine(load_params(args.params))
    if metrics["steps"] == 0:
        print("refine is off (refine.steps: 0): models/refined.pt is models/model.pt")
    else:
        print(
            f"refined the decoder {metrics['steps']} steps in {metrics['refine_seconds']:.0f}s; validation L1 "
            f"{metrics['val_l1_before']:.4f} -> {metrics['val_l1_after']:.4f}"
        )


if __name__ == "__main__":
    run_stage(main)
