"""What every stage stands on: params, entry point, errors, atomic writes, image decoding, manifests,
reports, versioning, and one owner per file format (prepared store, run records). errors, images and
packages also ship inside the registered model: they import nothing else from this project."""
