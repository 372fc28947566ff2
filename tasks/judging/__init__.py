"""The science behind evaluate and promote: metrics, plots, the HOG+SVM baseline, promotion gates,
scoring on held-out images and the MLflow registry."""
