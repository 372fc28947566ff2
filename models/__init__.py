"""Model code: networks (timm factory + our small nets), the LightningModule and DataModule, the
predictor used for scoring, and the MLflow pyfunc wrapper."""
