"""MLflow "models from code" entry: MLflow copies this file into the saved model and runs it on load
(with the model's code_paths on sys.path). It is never imported by our own code."""

from mlflow.models import set_model

from models.pyfunc import ImgclsModel

set_model(ImgclsModel())
