"""Stage ``fid_reference``: Inception features, FID statistics and the class-consistency probe of the
real reference split (``evaluate.reference``, optionally a stratified ``evaluate.reference_size``
subset). It depends on the data and the FID settings only, so every experiment reuses it."""

from __future__ import annotations

from cvae_pipeline import paths
from cvae_pipeline.config import load_params
from cvae_pipeline.data.prepared import load_prepared
from cvae_pipeline.data.splits import stratified_subset
from cvae_pipeline.io import atomic_directory
from cvae_pipeline.metrics.class_consistency import LinearProbe
from cvae_pipeline.metrics.fid import Statistics
from cvae_pipeline.metrics.inception import InceptionFeatures
from cvae_pipeline.metrics.reference import FEATURES_FILE, PROBE_FILE, STATS_FILE, FeatureSet
from cvae_pipeline.runtime import resolve_device
from cvae_pipeline.stage import run_stage, stage_parser


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    cfg = load_params(args.params).evaluate
    split = load_prepared(paths.PREPARED_DIR, cfg.reference)
    images, labels = split.images, split.labels
    if cfg.reference_size is not None and cfg.reference_size < len(labels):
        idx = stratified_subset(labels, cfg.reference_size, seed=0, what="evaluate.reference_size")
        images, labels = images[idx], labels[idx]
    extractor = InceptionFeatures(resolve_device(cfg.device, "evaluate.device"), cfg.batch_size, engine=cfg.engine)
    print(
        f"reference: {len(labels)} {cfg.reference} images; Inception features: {', '.join(extractor.settings.values())}"
    )
    features = extractor(images, desc=f"inception {cfg.reference}")
    probe = LinearProbe.fit(features, labels, cfg.probe_folds)
    print(f"class-consistency probe: {probe.real_cv_accuracy:.3f} cross-validated accuracy on real images")
    with atomic_directory(paths.FID_REFERENCE_DIR) as tmp:
        FeatureSet(features, labels, split.classes).save(tmp / FEATURES_FILE)
        Statistics.of(features).save(tmp / STATS_FILE)
        probe.save(tmp / PROBE_FILE)
    print(f"wrote {paths.FID_REFERENCE_DIR}/{FEATURES_FILE}, {STATS_FILE} and {PROBE_FILE}")


if __name__ == "__main__":
    run_stage(main)
