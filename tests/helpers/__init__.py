"""What tests build for themselves (nothing is downloaded), one module per kind of thing:

- images: generated pictures, written as files or into a content-addressed store the way ingest does.
- prepared_store: a tiny store in the layout `augment` writes (+ the split manifest train hashes).
- brightness_pyfunc: THE stub pyfunc model (MLflow "models from code"; no training, nothing unpickled).
- brightness_models: save or log that stub, and the split manifests it is scored on.
- dvc_project: a throw-away copy of the project in its own git + DVC repo, for real `dvc repro` runs.
"""
