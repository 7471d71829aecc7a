"""MLflow "model from code" entry point: the pyfunc generator, defined without pickling.

``serving.log_generator`` logs this file as the model's code; MLflow runs it on
load, and ``set_model`` hands over the ``CVAEGenerator`` (which then reads
``model.pt`` from the model's artifacts). No cloudpickle payload is stored.
"""

from mlflow.models import set_model

from cvae_pipeline.serving import CVAEGenerator

set_model(CVAEGenerator())
